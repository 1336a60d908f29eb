"""Quantization settings as values: validation naming the flag, JSON round trip, stable keys, branch names."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from camelid.errors import CamelidError
from camelid.quant.settings import CalibSpec, QuantParams, RunOptions

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls,kwargs,flag", [
    (QuantParams, {"bits": 5}, "--bits"),
    (QuantParams, {"bits": True}, "--bits"),
    (QuantParams, {"group_size": 0}, "--group-size"),
    (QuantParams, {"group_size": -2}, "--group-size"),
    (QuantParams, {"group_size": 32.0}, "--group-size"),
    (QuantParams, {"damp": 1.0}, "--damp"),
    (QuantParams, {"damp": -0.01}, "--damp"),
    (QuantParams, {"damp": float("nan")}, "--damp"),
    (QuantParams, {"damp": float("inf")}, "--damp"),
    (QuantParams, {"method": "hqq"}, "--method"),
    (QuantParams, {"act_order": 1}, "--act-order"),
    (CalibSpec, {"nsamples": 0}, "--nsamples"),
    (CalibSpec, {"seq_len": -1}, "--seq-len"),
    (CalibSpec, {"seq_len": 2.5}, "--seq-len"),
    (CalibSpec, {"seed": "0"}, "--seed"),
    (CalibSpec, {"dataset": ""}, "--dataset"),
    (RunOptions, {"compute": "int8"}, "--compute-dtype"),
    (RunOptions, {"batch_size": 0}, "--batch-size"),
    (RunOptions, {"spill": "yes"}, "--spill"),
])
def test_bad_values_refused_naming_the_flag(cls, kwargs, flag):
    with pytest.raises(CamelidError, match=flag):
        cls(**kwargs)


def test_accepted_edges():
    assert QuantParams(group_size=-1).group_size == -1
    assert QuantParams(damp=0.0).damp == 0.0 and QuantParams(damp=0).damp == 0
    assert [QuantParams(bits=b).bits for b in (2, 3, 4, 8)] == [2, 3, 4, 8]
    assert CalibSpec(dataset_path=Path("/x/y.txt")).dataset_path == "/x/y.txt"  # stored as JSON-able text


def test_cli_refuses_bad_settings_before_reading_the_model(tmp_path, capsys):
    from camelid.cli import main

    for flag in ("--group-size", "--nsamples"):  # refused by argparse (exit 2) or by the settings (rc 2)
        try:
            rc = main(["quantize", str(tmp_path / "no-model"), str(tmp_path / "out"), flag, "0"])
        except SystemExit as e:
            rc = e.code
        assert rc == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("value", [
    QuantParams(), QuantParams(bits=3, group_size=-1, act_order=True, damp=0.1, sym=False, method="rtn"),
    CalibSpec(), CalibSpec(dataset="file", dataset_path="/a/b.jsonl", nsamples=4, seq_len=64, seed=7),
    RunOptions(), RunOptions(device="cpu", batch_size=3, spill=True, revision="main", progress=False),
])
def test_round_trip_and_equal_keys(value):
    cls = type(value)
    d = value.to_dict()
    back = cls.from_dict(json.loads(json.dumps(d)))
    assert back == value and hash(back) == hash(value) and back.digest() == value.digest()
    assert back.to_json() == value.to_json() and json.loads(value.to_json()) == d
    assert len({value, back}) == 1  # usable as a dict key / set member
    with pytest.raises(CamelidError, match="unknown"):
        cls.from_dict({**d, "nope": 1})
    with pytest.raises(AttributeError):  # frozen
        value.seed = 1


def test_digest_same_in_another_process():
    """`hash()` of strings changes per process (PYTHONHASHSEED); the digest is what a manifest may store."""
    p = QuantParams(bits=3, act_order=True)
    code = "from camelid.quant.settings import QuantParams as Q; print(Q(bits=3, act_order=True).digest())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(REPO / "src"), "PYTHONHASHSEED": "123"}).stdout.strip()
    assert other == p.digest()
    assert QuantParams().digest() != QuantParams(damp=0.02).digest()


def test_settings_import_no_torch():
    code = "import sys, camelid.quant.settings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src")}).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("params,name", [
    (QuantParams(), "gptq-4bit-128g-actorder_False"),
    (QuantParams(bits=4, group_size=32, act_order=True), "gptq-4bit-32g-actorder_True"),
    (QuantParams(bits=8, group_size=-1, act_order=True), "gptq-8bit--1g-actorder_True"),
    (QuantParams(bits=3, group_size=128, act_order=True, sym=False), "gptq-3bit-128g-actorder_True"),
])
def test_branch_name(params, name):
    assert params.branch_name() == name
