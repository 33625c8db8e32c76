"""``se-hub predict IMAGE ... --model M``: classify images with a pretrained model or an exported file."""


def add_parser(sub) -> None:
    p = sub.add_parser('predict', help='classify images with a pretrained model')
    p.add_argument('images', nargs='+', metavar='IMAGE', help="image files, or skimage:NAME (e.g. skimage:chelsea)")
    p.add_argument('--model', required=True, help="MODEL[.TAG], hf-hub:REPO, local-dir:PATH or an exported "
                   "FILE.onnx / .xml (OpenVINO) / .pt / .pt2 (se-hub export)")
    p.add_argument('--topk', type=int, default=5)
    p.add_argument('--json', action='store_true', help='print JSON')


def load_image(spec: str):
    """A PIL image from a path, or 'skimage:NAME' for one of scikit-image's bundled photos."""
    from PIL import Image

    from se_hub.images import read_rgb, to_rgb
    if spec.startswith('skimage:'):
        try:
            import skimage.data
        except ImportError:
            raise ValueError(f'{spec} needs scikit-image: pip install scikit-image') from None
        loader = getattr(skimage.data, spec.split(':', 1)[1], None)
        if loader is None:
            raise ValueError(f'{spec}: scikit-image has no image named like that (try skimage:chelsea)')
        return to_rgb(Image.fromarray(loader()))
    try:
        return read_rgb(spec)
    except FileNotFoundError:
        raise ValueError(f'image not found: {spec}') from None
    except OSError as e:
        raise ValueError(f'cannot read image {spec}: {e}') from None


def run(args) -> int:
    import json

    import torch

    from se_hub.deploy.export import is_exported_file, label_names, predict_exported

    from ..specs import create
    images = [load_image(spec) for spec in args.images]
    if is_exported_file(args.model):  # an exported .onnx / .xml / .pt / .pt2 with its preprocessing and labels
        probs, names, header = predict_exported(args.model, images)
    else:
        from timm.data import create_transform, resolve_data_config
        model = create(args.model, pretrained=True, directories=False).eval()
        transform = create_transform(**resolve_data_config({}, model=model))
        names = label_names(model)
        with torch.inference_mode():
            probs = model(torch.stack([transform(img) for img in images])).softmax(-1)
        header = f"{args.model} ({getattr(model, 'loaded_weights', None) or args.model})"
    results = []
    for spec, p in zip(args.images, probs):
        top = p.topk(min(args.topk, p.numel()))
        results.append({'image': spec, 'predictions': [
            {'label': names[i], 'index': int(i), 'probability': round(float(v), 4)}
            for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(header)
    for r in results:
        print(r['image'])
        for pred in r['predictions']:
            print(f"  {pred['probability']:7.2%}  {pred['label']}")
    return 0
