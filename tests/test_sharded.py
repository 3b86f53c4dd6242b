"""`accelerate launch` with two gloo processes: evaluate and detect give what one process gives."""

import json
import subprocess

import numpy as np
import pytest
from data_trees import make_mvtec_tree
from test_pipeline import tiny_pipeline
from test_training_runs import ENV, cpu_ddp_launch

from diffad.cli import main
from diffad.metrics import METRIC_KEYS

# Every command of one launch, so the start-up (torch, two processes, gloo) is paid once.
RUN_ALL = "import json, sys\nfrom diffad.cli import main\nfor argv in json.loads(sys.argv[1]):\n    assert main(argv) == 0\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    make_mvtec_tree(
        root / "data",
        "widget",
        size=16,
        n_train=2,
        n_good_test=5,
        n_defect=4,
        defect_types=("hole", "scratch"),
    )
    pipe = tiny_pipeline(None, channels=3)
    pipe.calibrate(np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype(np.float32), mode="global")
    pipe.save_pretrained(root / "model")
    return root


def commands(root, out):
    evaluate = ["evaluate", "--model", str(root / "model"), "--data", str(root / "data"), "--batch_size", "3"]
    return [
        [*evaluate, "--output_dir", str(out / "exact")],
        [*evaluate, "--output_dir", str(out / "streamed"), "--metrics_memory", "0"],
        ["detect", "--model", str(root / "model"), "--input", str(root / "data" / "widget" / "test"),
         "--output_dir", str(out / "detect"), "--batch_size", "2"],
    ]  # fmt: skip


def test_two_processes_evaluate_and_detect_as_one(setup, tmp_path):
    script = tmp_path / "run_all.py"
    script.write_text(RUN_ALL)
    two = subprocess.Popen(
        [*cpu_ddp_launch(), str(script), json.dumps(commands(setup, tmp_path / "two"))],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for argv in commands(setup, tmp_path / "one"):
        assert main(argv) == 0
    stdout, stderr = two.communicate(timeout=300)
    assert two.returncode == 0, stderr[-3000:]
    assert stdout.count("wrote ") == 3 + 3 + 1  # the main process alone reports and writes

    one, two_out = tmp_path / "one", tmp_path / "two"
    for name in ("exact", "streamed"):
        a, b = (json.loads((d / name / "metrics.json").read_text()) for d in (one, two_out))
        assert b["settings"]["num_processes"] == 2 and a["settings"]["num_processes"] == 1
        assert (one / name / "scores.csv").read_text() == (two_out / name / "scores.csv").read_text()
        for key in METRIC_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-6), (name, key)
        for defect, values in a["per_defect"].items():
            assert all(b["per_defect"][defect][k] == pytest.approx(values[k], abs=1e-6) for k in METRIC_KEYS)
        assert a["per_category"]["widget"]["pixel_metrics"] == b["per_category"]["widget"]["pixel_metrics"]
        # Written once: no temporary or partial file is left beside the outputs.
        assert sorted(p.name for p in (two_out / name).iterdir()) == sorted(
            p.name for p in (one / name).iterdir()
        )
    files = [sorted((d / "detect").rglob("*")) for d in (one, two_out)]
    assert [p.relative_to(one) for p in files[0]] == [p.relative_to(two_out) for p in files[1]]
    for a, b in zip(*files):
        assert a.is_dir() or a.read_bytes() == b.read_bytes(), a
