"""Resource names and ids (kairos.core.names) and secret material (kairos.core.secrets)."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kairos.core import secrets
from kairos.core.errors import KairosError
from kairos.core.names import (
    CALLERS_WORKSPACE,
    RunName,
    TriggerName,
    WebhookName,
    new_id,
    parse_run,
    parse_trigger,
    parse_webhook,
    parse_workspace,
)

# ---------------------------------------------------------------- names


def test_valid_names_parse_and_round_trip() -> None:
    assert parse_workspace("workspaces/acme") == "acme"
    assert parse_workspace("workspaces/a-1") == "a-1"
    trigger = parse_trigger("workspaces/acme/triggers/t_01jd5x")
    assert trigger == TriggerName("acme", "t_01jd5x")
    assert str(trigger) == "workspaces/acme/triggers/t_01jd5x"
    webhook = parse_webhook("workspaces/acme/webhooks/wh-1")
    assert webhook == WebhookName("acme", "wh-1")
    assert str(webhook) == "workspaces/acme/webhooks/wh-1"
    run = parse_run("workspaces/acme/triggers/t1/runs/r_9")
    assert run == RunName("acme", "t1", "r_9")
    assert str(run) == "workspaces/acme/triggers/t1/runs/r_9"


def test_length_limits() -> None:
    assert parse_workspace("workspaces/a" + "b" * 62) == "a" + "b" * 62
    assert parse_trigger("workspaces/acme/triggers/" + "x" * 63).trigger == "x" * 63
    assert parse_trigger("workspaces/acme/triggers/7").trigger == "7"


def _rejects(parse, name: str, field: str) -> KairosError:
    with pytest.raises(KairosError) as raised:
        parse(name, field)
    error = raised.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_RESOURCE_NAME"
    assert [violation.field for violation in error.violations] == [field]
    assert error.message.startswith(f"{field}: ")
    return error


@pytest.mark.parametrize(
    "name",
    [
        "",
        "acme",
        "workspace/acme",
        "workspaces/",
        "workspaces/acme/",
        "workspaces/acme/triggers/t1",
        "/workspaces/acme",
    ],
)
def test_workspace_shape_is_enforced(name: str) -> None:
    error = _rejects(parse_workspace, name, "parent")
    assert "workspaces/{workspace}" in error.message or "invalid workspace id" in error.message


@pytest.mark.parametrize(
    "workspace", ["a", "Acme", "1acme", "-acme", "ac_me", "ac.me", "a" + "b" * 63, "acme\n", "ac me", "é"]
)
def test_bad_workspace_ids_are_rejected(workspace: str) -> None:
    error = _rejects(parse_workspace, f"workspaces/{workspace}", "request.parent")
    assert "invalid workspace id" in error.message


@pytest.mark.parametrize(
    "name",
    [
        "workspaces/acme/webhooks/w1",  # wrong collection
        "workspaces/acme/trigger/t1",
        "projects/acme/triggers/t1",
        "workspaces/acme/triggers/t1/runs/r1",  # extra segments
        "workspaces/acme/triggers/t1/extra",
        "workspaces/acme/triggers",
        "workspaces/acme",
    ],
)
def test_wrong_trigger_shapes_are_rejected(name: str) -> None:
    error = _rejects(parse_trigger, name, "trigger.name")
    assert "workspaces/{workspace} / triggers/{trigger}" in error.message


@pytest.mark.parametrize("trigger_id", ["", "T1", "_t1", "-t1", "t.1", "t/1", "t 1", "x" * 64, "t1\n", "ü"])
def test_bad_resource_ids_are_rejected(trigger_id: str) -> None:
    _rejects(parse_trigger, f"workspaces/acme/triggers/{trigger_id}", "name")


def test_wrong_collections_for_webhooks_and_runs() -> None:
    _rejects(parse_webhook, "workspaces/acme/triggers/t1", "name")
    _rejects(parse_run, "workspaces/acme/triggers/t1/webhooks/r1", "name")
    _rejects(parse_run, "workspaces/acme/triggers/t1", "name")
    _rejects(parse_run, "workspaces/acme/triggers/t1/runs/R1", "name")


def test_default_field_names() -> None:
    with pytest.raises(KairosError) as raised:
        parse_workspace("nope")
    assert raised.value.violations[0].field == "parent"
    with pytest.raises(KairosError) as raised:
        parse_trigger("nope")
    assert raised.value.violations[0].field == "name"


def test_callers_workspace_placeholder_is_not_a_real_workspace() -> None:
    _rejects(parse_workspace, CALLERS_WORKSPACE, "parent")


def test_new_id_is_prefixed_unique_and_sortable() -> None:
    ids = [new_id("t") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert value.startswith("t_")
        assert len(value) == 2 + 26
        assert value == value.lower()
        # a generated id is itself a valid resource id
        assert parse_trigger(f"workspaces/acme/triggers/{value}").trigger == value
    # ULIDs begin with a millisecond timestamp: ids made later never sort before ids made earlier
    # (within one millisecond the random part decides, so compare the timestamp prefix only).
    prefixes = [value[2:12] for value in ids]
    assert prefixes == sorted(prefixes)


# ---------------------------------------------------------------- secrets


def test_digest_is_sha256_and_matches_checks_it() -> None:
    secret = secrets.new_secret("whk")
    stored = secrets.digest(secret)
    assert len(stored) == 32
    assert stored == secrets.digest(secret)
    assert stored != secrets.digest(secret + "x")
    assert secrets.digest("abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert secrets.matches(secret, stored)
    assert not secrets.matches(secret[:-1], stored)
    assert not secrets.matches(secret + " ", stored)
    assert not secrets.matches("", stored)
    assert not secrets.matches(secret, b"")
    assert not secrets.matches(secret, stored[:-1])


def test_new_secret_has_its_prefix_and_is_random() -> None:
    values = {secrets.new_secret("whk") for _ in range(200)}
    assert len(values) == 200
    for value in values:
        assert value.startswith("whk_")
        assert len(value) > len("whk_") + 40


def test_api_key_round_trip() -> None:
    for _ in range(200):
        key_id = new_id("k").removeprefix("k_")
        key = secrets.new_api_key(key_id)
        assert key.startswith(f"kairos_{key_id}_")
        assert secrets.split_api_key(key) == key_id
    assert secrets.new_api_key("abc") != secrets.new_api_key("abc")


@pytest.mark.parametrize(
    "key",
    ["", "kairos", "kairos_", "kairos__secret", "kairos_id_", "kairos_id", "other_id_secret", "KAIROS_id_secret", "x"],
)
def test_malformed_api_keys_have_no_key_id(key: str) -> None:
    assert secrets.split_api_key(key) is None


def test_secret_part_may_contain_underscores() -> None:
    assert secrets.split_api_key("kairos_id1_se_cr_et") == "id1"


@given(st.text())
def test_split_api_key_never_raises(text: str) -> None:
    result = secrets.split_api_key(text)
    assert result is None or (result and "_" not in result and text.startswith(f"kairos_{result}_"))


@given(st.text(alphabet=st.characters(blacklist_characters="_"), min_size=1), st.text(min_size=1))
def test_split_api_key_finds_any_underscore_free_id(key_id: str, secret: str) -> None:
    assert secrets.split_api_key(f"kairos_{key_id}_{secret}") == key_id
