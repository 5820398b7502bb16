import os

import pytest

from oficina.errors import ModelNotFound, RegistryError
from oficina.registry.manifest import FileRef, Manifest, safe_relpath
from oficina.registry.names import parse_ref
from oficina.registry.registry import Registry


def _manifest(reg: Registry, payload: bytes, **kw) -> Manifest:
    digest, size = reg.blobs.put_stream([payload])
    return Manifest(format="gguf", files=[FileRef("model.gguf", digest, size)], **kw)


def test_names():
    assert parse_ref("smollm2").name == "smollm2:latest"
    assert parse_ref("Gemma3:270M").name == "gemma3:270m"
    r = parse_ref("smollm2@3")
    assert (r.name, r.version) == ("smollm2:latest", 3)
    for bad in ("", "a b", "../x", "x@0", "x@y", ":tag", "x:"):
        if bad == "x:":
            continue  # an empty tag means latest, as in Ollama
        with pytest.raises(RegistryError):
            parse_ref(bad)


def test_versions_history_rollback(registry):
    m1 = _manifest(registry, b"one")
    m2 = _manifest(registry, b"two", params={"temperature": 0.1})
    e1 = registry.add("m", m1, producer={"op": "pull"})
    e2 = registry.add("m", m2, parent=e1.ref, producer={"op": "create"})
    assert (e1.version, e2.version) == (1, 2)
    versions, head = registry.history("m")
    assert [v.version for v in versions] == [1, 2] and head == 2
    assert versions[1].parent == "m:latest@1"
    assert registry.get("m").manifest.params == {"temperature": 0.1}
    back = registry.rollback("m")
    assert back.version == 1 and registry.get("m").version == 1
    assert registry.get("m@2").version == 2  # old versions stay reachable
    registry.rollback("m", to=2)
    assert registry.get("m").version == 2
    with pytest.raises(RegistryError, match="no version 7"):
        registry.rollback("m", to=7)


def test_copy_and_remove_collects_garbage(registry):
    e = registry.add("a", _manifest(registry, b"weights"))
    c = registry.copy("a", "b:v1")
    assert c.manifest.files == e.manifest.files and c.parent == "a:latest@1"
    registry.remove("a")
    assert registry.blobs.has(e.manifest.files[0].digest)  # still used by b
    registry.remove("b:v1")
    assert not registry.blobs.has(e.manifest.files[0].digest)
    with pytest.raises(ModelNotFound):
        registry.get("a")


def test_interrupted_write_leaves_nothing(registry):
    def chunks():
        yield b"partial data"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.blobs.put_stream(chunks())
    assert os.listdir(registry.blobs.dir) == []


def test_checksum_mismatch_stores_nothing(registry):
    with pytest.raises(RegistryError, match="checksum"):
        registry.blobs.put_stream([b"x"], expect="sha256:" + "0" * 64)
    assert os.listdir(registry.blobs.dir) == []


def test_manifest_must_reference_stored_blobs(registry):
    m = Manifest(format="gguf", files=[FileRef("model.gguf", "sha256:" + "a" * 64, 1)])
    with pytest.raises(RegistryError, match="missing blobs"):
        registry.add("x", m)
    assert registry.list() == []


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../b", "a\\b", ""])
def test_paths_from_manifests_cannot_escape(path):
    with pytest.raises(RegistryError):
        safe_relpath(path)


def test_invalid_digest_never_becomes_a_path(registry):
    with pytest.raises(RegistryError):
        registry.blobs.path("sha256:../../etc/passwd")


def test_snapshot_links_files(registry):
    e = registry.add("s", _manifest(registry, b"abc"))
    folder = registry.snapshot(e)
    assert (folder / "model.gguf").read_bytes() == b"abc"
    assert registry.snapshot(e) == folder


def test_publish_stores_describes_and_inherits_the_parents_fields(registry, tmp_path):
    """``Registry.publish`` is the one way a version is made: the folder's files stored, the
    parent's Modelfile fields (not its weights or adapters) carried over, the manifest described
    from the stored files with the caller's details on top, lineage and metrics recorded."""
    import tiny

    folder = tmp_path / "llama"
    tiny.build("llama", folder)
    base = registry.add("base", _manifest(registry, b"w", params={"temperature": 0.2}, template="{{ .Prompt }}",
                                          system="Be brief.", license=["MIT"],
                                          adapters=[FileRef("0/x.safetensors", *registry.blobs.put_stream([b"a"]))]))
    e = registry.publish("derived", folder, parent=base.ref, inherit=base.manifest, producer={"op": "test"},
                         metrics={"val_loss": 1.5}, details={"tuning": {"method": "full"}})
    m = e.manifest
    assert (m.format, m.params, m.template, m.system, m.license) == ("hf", {"temperature": 0.2}, "{{ .Prompt }}",
                                                                     "Be brief.", ["MIT"])
    assert m.adapters == [] and {f.path for f in m.files} >= {"config.json", "model.safetensors"}
    assert m.details["architecture"] == "LlamaForCausalLM" and m.details["tuning"] == {"method": "full"}
    assert (e.parent, e.producer, e.metrics) == (base.ref, {"op": "test"}, {"val_loss": 1.5})
    fresh = registry.publish("plain", folder)  # nothing inherited
    assert (fresh.manifest.params, fresh.manifest.template, fresh.parent) == ({}, None, None)
    assert fresh.manifest.files == m.files  # the same blobs, stored once
