"""Secrets never reach MLflow: URI passwords and secret environment values are masked."""

from __future__ import annotations

from ckptmerge.tracking.mlflow_run import flatten
from ckptmerge.tracking.secrets import redact


def test_uri_passwords_are_masked():
    assert redact("postgresql://mlflow:s3cr3tpw@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"  # a port is not a password
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_secret_environment_values_are_masked(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("HOME_DIR_NAME", "hf_abcdef")  # not secret-named: untouched on its own
    text = "token hf_abcdefghijklmnop and key wJalrXUtnFEMI/K7MDENG"
    assert redact(text) == "token *** and key ***"
    flat = flatten({"tracking": {"uri": "postgresql://u:pw123456@h/db"}, "x": ["hf_abcdefghijklmnop"]})
    assert flat == {"tracking.uri": "postgresql://u:***@h/db", "x": '["***"]'}


def test_structured_outputs_are_masked_value_by_value(monkeypatch):
    from ckptmerge.tracking.secrets import redact_data, redact_yaml, uri_password_keys

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    result = {
        "mlflow": {"tracking_uri": "http://u:pw123@h:5000", "run_id": "abc"},
        "n": 3,
        "trials": [{"source": "hf_abcdefghijklmnop"}, None],
    }
    assert redact_data(result) == {
        "mlflow": {"tracking_uri": "http://u:***@h:5000", "run_id": "abc"},
        "n": 3,
        "trials": [{"source": "***"}, None],
    }
    import yaml

    doc = "tracking:\n  uri: http://u:pw123@h\ntoken: hf_abcdefghijklmnop\n"
    masked = redact_yaml(doc)
    # a bare *** would be a YAML alias: the masked file must still load
    assert yaml.safe_load(masked) == {"tracking": {"uri": "http://u:***@h"}, "token": "***"}
    clean = "a: 1\nb: [x, y]  # a comment\n"
    assert redact_yaml(clean) == clean  # untouched byte for byte
    cfg = {
        "tracking": {"uri": "postgresql://u:pw@db/x", "artifact_location": "s3://b/p"},
        "model": {"checkpoints": ["/a", "https://me:tok@host/b"]},
    }
    assert uri_password_keys(cfg) == ["tracking.uri", "model.checkpoints[1]"]
