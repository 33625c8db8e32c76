"""``se-hub push MODEL REPO``: publish a model in timm's Hub format."""


def add_parser(sub) -> None:
    p = sub.add_parser('push', help='publish a model in timm Hub format')
    p.add_argument('model', help='MODEL[.TAG], a directory exported by se_hub, hf-hub:REPO or local-dir:PATH')
    p.add_argument('repo_id')
    p.add_argument('--checkpoint', help='load this checkpoint (any supported layout, or a timm train.py '
                   'checkpoint) into MODEL first')
    p.add_argument('--use-ema', action='store_true', help="with --checkpoint: its EMA weights (timm's state_dict_ema)")
    p.add_argument('--as-timm', action='store_true', help="publish in the keys and config of the timm model of the "
                   'same function (loads with plain timm, no se_hub needed)')
    p.add_argument('--allow-random-weights', action='store_true', help='publish a model that was never trained')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision')


def run(args) -> int:
    from se_hub.hub import push_to_hub
    from se_hub.weights.checkpoint import load_checkpoint

    from ..specs import checked, create
    spec = checked(args.model)
    pretrained = args.checkpoint is None and ('.' in spec or ':' in spec)
    if not (pretrained or args.checkpoint or args.allow_random_weights):
        raise ValueError(f'{spec} would be published with random weights: name its weights (MODEL.TAG, see '
                         '`se-hub list --pretrained`), load them with --checkpoint FILE, or pass '
                         '--allow-random-weights to publish an untrained model')
    model = create(spec, pretrained=pretrained)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema)
    print(push_to_hub(model, args.repo_id, private=args.private, revision=args.revision, as_timm=args.as_timm))
    return 0
