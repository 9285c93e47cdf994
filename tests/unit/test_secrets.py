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
