"""``se-hub bench MODEL``: which deployment path is fastest on this CPU, and what it costs in accuracy
(se_hub.deploy.benchmark)."""

PATHS = ['eager', 'optimize', 'torch.compile', 'onnxruntime fp32', 'onnxruntime int8', 'openvino f32',
         'openvino bf16', 'openvino int8']  # se_hub.deploy.benchmark.PATHS


def add_parser(sub) -> None:
    p = sub.add_parser('bench', help='time every deployment path this CPU can run (eager, optimize, onnxruntime, '
                                     'OpenVINO; fp32, bf16, INT8), measure its accuracy on real photos and recommend '
                                     'the fastest one whose accuracy holds')
    p.add_argument('model', help='MODEL[.TAG] (pretrained weights), hf-hub:REPO or local-dir:OUT')
    p.add_argument('--batch-size', type=int, default=16, help='timed besides batch 1 (default 16)')
    p.add_argument('--rounds', type=int, default=15, help='round-robin timing rounds, medians reported (default 15)')
    p.add_argument('--img-size', type=int, help="input size (default: the model's pretrained input size)")
    p.add_argument('--compile', action='store_true', help='also time torch.compile (compiles for minutes)')
    p.add_argument('--no-int8', dest='int8', action='store_false', help='skip the INT8 paths (they calibrate first)')
    p.add_argument('--calibration', metavar='DIR',
                   help="a folder of representative images for INT8 calibration (default: scikit-image's photos)")
    p.add_argument('--photos', nargs='+', metavar='IMAGE',
                   help='images accuracy is judged on and timed with: files or skimage:NAME (default: four of '
                        "scikit-image's photos)")
    p.add_argument('--paths', nargs='+', choices=PATHS, metavar='PATH',
                   help=f"only these paths (eager always runs: it is the reference): {', '.join(PATHS)}")
    p.add_argument('--threads', type=int, help="onnxruntime and OpenVINO threads (default: theirs)")
    p.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                   help='random weights (speed does not depend on them); the default loads pretrained weights')
    p.add_argument('--json', action='store_true', help='print the result as JSON (progress still goes to stderr)')


def run(args) -> int:
    import json

    import se_hub  # noqa: F401  (registers the models)
    from se_hub.deploy.benchmark import benchmark, format_report, print_progress

    from ..specs import create
    from .predict import load_image
    photos = [load_image(spec) for spec in args.photos] if args.photos else None
    model = create(args.model, args.pretrained).eval()
    result = benchmark(model, batch_size=args.batch_size, rounds=args.rounds, img_size=args.img_size,
                       compile=args.compile, int8=args.int8, calibration=args.calibration, threads=args.threads,
                       paths=args.paths, progress=print_progress, photos=photos)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0
