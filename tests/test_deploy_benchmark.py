"""se_hub.deploy.benchmark: CPU features read from /proc/cpuinfo text, the plan of paths (what a CPU without AMX /
bf16 or a machine without onnxruntime skips, and why), and a real one-round run on a tiny model."""
import timm
import torch

from se_hub.deploy.benchmark import COSINE_FLOOR, PATHS, benchmark, cpu_features, format_report, plan

# /proc/cpuinfo excerpts of real CPUs (flags shortened to the ones that matter, as the kernel prints them)
SKYLAKE_AVX512 = 'model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f ' \
                 'avx512bw avx512vl\n'
SAPPHIRE_RAPIDS = 'model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16 ' \
                  'amx_bf16 amx_tile amx_int8\n'
GRAVITON3 = 'processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm bf16\n'
ALL_MODULES = ['onnx', 'onnxruntime', 'openvino', 'nncf']


def test_cpu_features_from_cpuinfo():
    f = cpu_features(SKYLAKE_AVX512, openvino_caps=['FP32', 'INT8'])
    assert (f['avx2'], f['avx512'], f['vnni'], f['amx'], f['bf16']) == (True, True, False, False, False)
    assert f['cpu'] == 'Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz'
    f = cpu_features(SAPPHIRE_RAPIDS, openvino_caps=[])
    assert (f['vnni'], f['amx'], f['bf16']) == (True, True, True)
    f = cpu_features(GRAVITON3, openvino_caps=[])
    assert (f['avx2'], f['bf16'], f['arm_dot_product']) == (False, True, True)
    assert cpu_features('flags : avx2', openvino_caps=['FP32', 'BF16'])['bf16']  # OpenVINO's word counts too


def test_plan_on_a_cpu_without_amx_or_bf16_says_what_it_skips_and_why():
    steps = plan(cpu_features(SKYLAKE_AVX512, openvino_caps=['FP32', 'INT8']), ALL_MODULES)
    assert [s['path'] for s in steps] == list(PATHS)
    skipped = {s['path']: s['skipped'] for s in steps if s['skipped']}
    assert skipped == {'openvino bf16': 'no bf16 on this CPU (needs AMX or AVX-512 BF16)',
                       'torch.compile': skipped['torch.compile']}
    assert 'not asked for' in skipped['torch.compile']
    # the same CPU with bf16, and torch.compile asked for: nothing skipped
    assert not [s for s in plan(cpu_features(SAPPHIRE_RAPIDS, []), ALL_MODULES, compile=True) if s['skipped']]


def test_plan_without_the_optional_runtimes():
    steps = {s['path']: s['skipped'] for s in plan(cpu_features(SAPPHIRE_RAPIDS, []), ['onnx', 'openvino'],
                                                   int8=False)}
    assert steps['eager'] is None and steps['optimize'] is None and steps['openvino f32'] is None
    assert steps['onnxruntime fp32'] == steps['onnxruntime int8'] == \
        "onnxruntime not installed (pip install -e '.[deploy]')"
    assert steps['openvino int8'].startswith("onnxruntime not installed (pip install -e '.[deploy]'")
    steps = {s['path']: s['skipped'] for s in plan(cpu_features(SAPPHIRE_RAPIDS, []), ALL_MODULES, int8=False)}
    assert steps['onnxruntime int8'] == steps['openvino int8'] == 'INT8 not asked for'
    steps = {s['path']: s['skipped'] for s in plan(cpu_features(SAPPHIRE_RAPIDS, []), [])}
    assert steps['openvino bf16'] == "onnx and openvino not installed (pip install -e '.[openvino]')"


def test_benchmark_tiny_model_one_round():
    """A real run (one round, 32-px CIFAR SE-ResNet): a row for every path the plan runs, each path's accuracy
    measured against eager float32 (eager itself: exact), and the recommendation is the fastest row whose accuracy
    holds."""
    torch.manual_seed(0)
    model = timm.create_model('se_resnet20_cifar', layers=(1, 1, 1))
    lines = []
    result = benchmark(model, batch_size=2, rounds=1, progress=lines.append)
    ran = [s['path'] for s in result['plan'] if not s['skipped']]
    assert [r['path'] for r in result['rows']] == ran and ran[:2] == ['eager', 'optimize']
    assert 'torch.compile' not in ran and len(ran) >= 2
    rows = {r['path']: r for r in result['rows']}
    assert rows['eager']['max_abs_diff'] == 0 and rows['eager']['speedup'] == {1: 1.0, 2: 1.0}
    for r in result['rows']:
        assert set(r['ms']) == {1, 2} and all(t > 0 for t in r['ms'].values())
        assert r['accuracy_holds'] == (r['cosine'] >= COSINE_FLOOR and r['top1_agreement'] == 1.0)
    for path in ('optimize', 'onnxruntime fp32', 'openvino f32'):  # float32 paths: the same function
        if path in rows:
            assert rows[path]['max_abs_diff'] < 1e-3 and rows[path]['accuracy_holds'], rows[path]
    holding = [r for r in result['rows'] if r['accuracy_holds']]
    assert result['recommended'] == min(holding, key=lambda r: r['ms'][1])['path']
    assert result['recommended_by_batch'][2] == min(holding, key=lambda r: r['ms'][2])['path']
    assert any(line.startswith('building openvino') for line in lines) == ('openvino f32' in ran)
    assert 'timing: round 1/1' in lines
    report = format_report(result)
    assert all(f'| {p} |' in report for p in ran) and f"recommended: {result['recommended']}" in report
    assert 'skipped torch.compile: not asked for' in report
