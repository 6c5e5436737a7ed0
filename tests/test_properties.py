"""Property-based tests: whatever a config file or a manifest holds, the readers return a valid object
or raise UsageError (one clear line at the CLI), never another exception."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline import FORMAT_VERSION
from core.bundle import Artifact, Manifest, parse_manifest
from pipeline.config import RunConfig, _SECTIONS, load_config, validate
from core.errors import UsageError

SETTINGS = settings(max_examples=int(os.environ.get("PROP_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORK = Path(tempfile.mkdtemp(prefix="pipeline-props-"))
(WORK / "models.py").write_text("def build():\n    return None\n")
(WORK / "w.safetensors").write_bytes(b"")

# ---- configuration --------------------------------------------------------------------------------

SECTION_KEYS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in _SECTIONS.items()}
TOP_KEYS = [f.name for f in dataclasses.fields(RunConfig) if f.name not in _SECTIONS and f.name != "config_dir"]
WORDS = ["jetson", "mobile", "smoke", "default", "paper", "auto", "cpu", "cuda", "digits", "vae", "memory", "none",
         "generator", "noise", "js", "l1", "kl", "adam", "sgd", "pixel", "logits", "pixel+logits",
         "models.py:build", "missing.py:build", "w.safetensors", "missing.pt", "pkg.mod:fn", "test.npz", "~nobody/x"]

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 1e-3, 1e30, -1.0]),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON escapes are TOML basic-string escapes (a lone surrogate is refused: fine)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_document(doc: dict) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict) or k not in _SECTIONS]
    for k, v in doc.items():
        if isinstance(v, dict) and k in _SECTIONS:
            lines.append(f"[{k}]")
            lines += [f"{json.dumps(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


section_tables = st.sampled_from(sorted(SECTION_KEYS)).flatmap(
    lambda name: st.tuples(st.just(name), st.dictionaries(st.sampled_from(SECTION_KEYS[name]) | st.text(max_size=8),
                                                          values, max_size=5)))
documents = st.tuples(
    st.dictionaries(st.sampled_from(TOP_KEYS) | st.text(max_size=8), values, max_size=4),
    st.lists(section_tables, max_size=4),
).map(lambda t: {**t[0], **dict(t[1])})


def check_config(cfg: RunConfig) -> None:
    """A config that loaded is fully valid and typed."""
    assert isinstance(cfg, RunConfig)
    validate(cfg)
    for section in _SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            ann = str(f.type).replace(" ", "")
            if v is None:
                assert "None" in ann, (section, f.name)
            elif ann.startswith("int"):
                assert isinstance(v, int) and not isinstance(v, bool), (section, f.name, v)
            elif ann.startswith("float"):
                assert isinstance(v, float) and math.isfinite(v), (section, f.name, v)
    assert cfg.distill.iterations > 0 and cfg.distill.batch_size > 0 and cfg.quantize.calibration_samples > 0


def load_text(text: str) -> RunConfig | None:
    p = WORK / "c.toml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load_config(p)
    except UsageError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip().splitlines()[0]
        return None


@SETTINGS
@given(documents)
def test_config_documents_load_or_usage_error(doc):
    cfg = load_text(toml_document(doc))
    if cfg is not None:
        check_config(cfg)


@SETTINGS
@given(st.text(max_size=200))
def test_config_arbitrary_text_loads_or_usage_error(text):
    cfg = load_text(text)
    if cfg is not None:
        check_config(cfg)


dotted = st.one_of(
    st.sampled_from(TOP_KEYS),
    st.sampled_from(sorted(SECTION_KEYS)).flatmap(lambda s: st.sampled_from(SECTION_KEYS[s]).map(lambda k: f"{s}.{k}")),
    st.sampled_from(sorted(SECTION_KEYS)),
    st.text(max_size=10),
)


@SETTINGS
@given(st.dictionaries(dotted, values, max_size=5))
def test_config_overrides_load_or_usage_error(overrides):
    try:
        cfg = load_config(None, overrides)
    except UsageError:
        return
    check_config(cfg)


def test_valid_documents_do_load():
    """The property above is not vacuous: sensible documents load, with their values."""
    cfg = load_text('preset = "smoke"\nseed = 3\n[distill]\niterations = 7\nlr_student = 1\n[quantize]\nqat_steps = 0\n')
    assert cfg is not None and cfg.seed == 3 and cfg.distill.iterations == 7 and cfg.distill.lr_student == 1.0
    cfg = load_text('[teacher]\nfactory = "models.py:build"\nweights = "w.safetensors"\ninput_shape = [6]\nnum_classes = 4\n')
    assert cfg is not None and cfg.teacher.builtin is None and cfg.teacher.input_shape == [6]


# ---- manifest -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
rel_paths = st.lists(st.text(alphabet="abcxyz_-.0123456789", min_size=1, max_size=8), min_size=1, max_size=3).map(
    "/".join).filter(lambda p: ".." not in p.split("/") and p.strip("/.") != "" and "." != p)
artifacts = st.builds(Artifact, path=rel_paths, role=st.sampled_from(["student-checkpoint", "vae", "student-int8-onnx", "x"]),
                      sha256=hexes, bytes=st.integers(min_value=0, max_value=2**40))
manifests = st.builds(
    Manifest,
    target=st.sampled_from(["jetson", "mobile"]) | st.text(max_size=8),
    input=st.fixed_dictionaries({"name": st.text(max_size=6), "shape": st.lists(st.integers(1, 64) | st.just("batch"), max_size=4),
                                 "dtype": st.just("float32"), "scale": st.floats(0.001, 1), "mean": st.lists(st.floats(0, 1), max_size=3)}),
    num_classes=st.integers(min_value=1, max_value=1000),
    classes=st.none() | st.lists(st.text(max_size=5), max_size=5),
    artifacts=st.lists(artifacts, max_size=5),
    parent=st.none() | hexes,
    format_version=st.integers(min_value=1, max_value=FORMAT_VERSION),
    pipeline_version=st.text(min_size=1, max_size=8),
    created=st.text(min_size=1, max_size=25),
    extra=st.dictionaries(st.text(min_size=1, max_size=6).filter(
        lambda k: k not in {"format_version", "pipeline_version", "target", "created", "input", "num_classes",
                            "classes", "artifacts", "parent"}), json_values, max_size=3),
)


def parse_or_usage_error(data):
    try:
        return parse_manifest(data)
    except UsageError as exc:
        assert str(exc).startswith("manifest.json:")
        return None


@SETTINGS
@given(json_values)
def test_manifest_arbitrary_json(data):
    m = parse_or_usage_error(data)
    if m is not None:
        assert isinstance(m, Manifest)


@SETTINGS
@given(manifests, st.sampled_from(["format_version", "target", "input", "num_classes", "artifacts", "classes", "parent",
                                   "created", "pipeline_version", "artifact-field"]), json_values)
def test_manifest_one_field_corrupted(m, field, value):
    data = json.loads(json.dumps(m.to_json()))
    if field == "artifact-field":
        assume(data["artifacts"])
        data["artifacts"][0][str(value)[:6] or "path"] = value
    else:
        data[field] = value
    parsed = parse_or_usage_error(data)
    if parsed is not None:
        assert parse_manifest(parsed.to_json()) == parsed


@SETTINGS
@given(manifests)
def test_manifest_round_trip(m):
    text = json.dumps(m.to_json())
    parsed = parse_manifest(json.loads(text))
    assert parsed == m
    assert json.dumps(parsed.to_json()) == text
