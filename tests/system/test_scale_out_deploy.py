"""The scale-out compose overlay: a second trainer, both in scale-out mode, valid flags."""

from __future__ import annotations

import yaml

from tests.system.helpers import REPO
from tests.system.test_deploy import assert_flags_exist

OVERLAY = REPO / "docker-compose.scale-out.yml"


def test_overlay_runs_two_scale_out_trainers_on_one_location() -> None:
    svc = yaml.safe_load(OVERLAY.read_text())["services"]
    ids = []
    for name in ("trainer", "trainer-2"):
        argv = svc[name]["command"]
        assert_flags_exist(argv[0], argv[1:])
        assert "--scale-out" in argv
        assert argv[argv.index("--group") + 1] == "liverec-trainer"
        assert argv[argv.index("--snapshots") + 1] == "/snapshots"
        ids.append(argv[argv.index("--instance-id") + 1])
        models = svc[name]["environment"]["LIVEREC_MODELS"]
        assert "popularity,itemknn,sequence" in models
    assert len(set(ids)) == 2
    assert "snapshots:/snapshots" in svc["trainer-2"]["volumes"]
