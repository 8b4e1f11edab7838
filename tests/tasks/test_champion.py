"""The `champion` quality gate on a real MLflow registry (no models needed: versions and tags)."""
from __future__ import annotations

import uuid

import pytest
from mlflow.tracking import MlflowClient

from tasks import champion

HELDOUT = champion.heldout_set("md5-of-eval.jsonl", {"max_new_tokens": 24})


@pytest.fixture()
def registry():
    """A fresh registered model; returns a function adding a version with a held-out accuracy."""
    client = MlflowClient()
    name = f"gate-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)

    def version(accuracy: float | None, held_out: str = HELDOUT) -> str:
        v = client.create_model_version(name, source=f"file:///nowhere/{uuid.uuid4().hex}").version
        uri = f"models:/{name}/{v}"
        if accuracy is not None:
            champion.record_heldout(uri, {"accuracy": accuracy, "accuracy_se": 0.01, "n": 100}, held_out)
        return uri
    version.name = name
    return version


def alias(name: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, champion.ALIAS).version)


def test_the_first_evaluated_model_becomes_champion(registry):
    first = registry(0.30)
    decision = champion.gate(first)
    assert decision["decision"] == "promoted" and alias(registry.name) == "1"
    assert decision["reason"] == "no champion yet; held-out accuracy 0.3000"
    again = champion.gate(first)  # a rerun whose stages were all cached offers the same version
    assert again["decision"] == "kept" and again["reason"] == "the candidate already is the champion"


def test_a_worse_model_does_not_move_the_alias_an_equal_or_better_one_does(registry):
    champion.gate(registry(0.30))
    worse = champion.gate(registry(0.29))
    assert worse["decision"] == "kept" and alias(registry.name) == "1"
    assert worse["reason"] == "held-out accuracy 0.2900 < champion's 0.3000"
    equal = champion.gate(registry(0.30))
    assert equal["decision"] == "promoted" and alias(registry.name) == "3"
    assert champion.gate(registry(0.45))["decision"] == "promoted" and alias(registry.name) == "4"


def test_accuracies_on_different_held_out_sets_are_not_compared(registry):
    champion.gate(registry(0.30))
    other = champion.heldout_set("md5-of-another-eval.jsonl", {"max_new_tokens": 24})
    decision = champion.gate(registry(0.90, held_out=other))
    assert decision["decision"] == "kept" and "different held-out set" in decision["reason"]
    assert alias(registry.name) == "1"


def test_evaluating_the_champion_on_another_set_later_does_not_block_the_gate(registry):
    first = registry(0.30)
    champion.gate(first)
    adhoc = champion.heldout_set("md5-of-eval.jsonl", {"max_new_tokens": 24, "limit": 8})
    champion.record_heldout(first, {"accuracy": 0.5, "accuracy_se": 0.1, "n": 8}, adhoc)  # r1flow evaluate
    decision = champion.gate(registry(0.40))
    assert decision["decision"] == "promoted", decision
    assert decision["reason"] == "held-out accuracy 0.4000 >= champion's 0.3000"


def test_a_model_without_held_out_accuracy_is_never_promoted(registry):
    decision = champion.gate(registry(None))
    assert decision["decision"] == "kept"
    with pytest.raises(Exception):
        alias(registry.name)


def test_version_tags_record_the_measurement(registry):
    uri = registry(0.25)
    tags = MlflowClient().get_model_version(registry.name, uri.rsplit("/", 1)[1]).tags
    assert float(tags["r1flow.heldout.accuracy"]) == 0.25 and tags["r1flow.heldout.set"] == HELDOUT


def test_the_held_out_set_identity_covers_data_and_settings():
    assert champion.heldout_set("a", {"x": 1}) != champion.heldout_set("b", {"x": 1})
    assert champion.heldout_set("a", {"x": 1}) != champion.heldout_set("a", {"x": 2})
    assert champion.heldout_set("a", {"x": 1, "y": 2}) == champion.heldout_set("a", {"y": 2, "x": 1})


def test_parse_rejects_alias_uris():
    assert champion.parse("models:/tiny/12") == ("tiny", "12")
    with pytest.raises(ValueError, match="models:/NAME/VERSION"):
        champion.parse("models:/tiny@champion")


def test_a_tag_collision_with_a_second_pipeline_is_retried_and_other_errors_are_not(registry, monkeypatch):
    """Two pipelines tagging the same cached version at once: the SQL store's insert-or-update
    can fail for the loser with a UNIQUE constraint error (seen in test_concurrency); setting the
    tag again updates the row the other pipeline wrote."""
    from mlflow.exceptions import MlflowException

    uri = registry(None)
    real, calls = MlflowClient.set_model_version_tag, []

    def collide_once(self, name, version, key, value):
        calls.append(key)
        if len(calls) == 1:
            real(self, name, version, key, value)  # the other pipeline's write ...
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: model_version_tags.key")
        return real(self, name, version, key, value)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", collide_once)
    champion.record_heldout(uri, {"accuracy": 0.4, "accuracy_se": 0.01, "n": 100}, HELDOUT)
    name, version = champion.parse(uri)
    tags = MlflowClient().get_model_version(name, version).tags
    assert tags[f"{champion.HELDOUT}.accuracy"] == "0.4" and tags[f"{champion.HELDOUT}.set"] == HELDOUT
    assert calls[:2] == [f"{champion.HELDOUT}.accuracy"] * 2  # the colliding tag was set again

    def broken(self, name, version, key, value):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: model version not found")

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", broken)
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        champion.record_heldout(uri, {"accuracy": 0.4}, HELDOUT)
