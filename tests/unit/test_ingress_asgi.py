"""The ingress's plain ASGI pieces: the route table (static paths, one path parameter at the end or in the
middle, misses) and the request headers."""

import pytest

from kairos.ingress.asgi import Routes, headers_of


async def hooks(_):
    return None


async def alias(_):
    return None


async def trigger(_):
    return None


async def health(_):
    return None


@pytest.fixture
def routes() -> Routes:
    table = Routes()
    table.add(("POST",), "/hooks/{webhook_id}", hooks)
    table.add(("POST",), "/api/hooks/webhook/{webhook_id}", alias)
    table.add(("POST",), "/triggers/{trigger_id}/webhook", trigger)
    table.add(("GET", "HEAD"), "/healthz", health)
    return table


@pytest.mark.parametrize(
    ("path", "handler", "param"),
    [
        ("/hooks/wh_1", hooks, "wh_1"),
        ("/hooks/wh_1/", hooks, "wh_1"),
        ("/api/hooks/webhook/wh_2", alias, "wh_2"),
        ("/triggers/t_1/webhook", trigger, "t_1"),
        ("/healthz", health, ""),
    ],
)
def test_matches(routes: Routes, path: str, handler, param: str) -> None:
    by_method, value = routes.match(path)
    assert value == param
    assert set(by_method.values()) == {handler}


@pytest.mark.parametrize(
    "path", ["/", "/hooks", "/hooks//", "/hooks/a/b", "/triggers/t_1/other", "/api/hooks/wh_1", "/healthz/x"]
)
def test_misses(routes: Routes, path: str) -> None:
    assert routes.match(path) is None


def test_methods_of_one_path_share_a_route(routes: Routes) -> None:
    by_method, _ = routes.match("/healthz")
    assert set(by_method) == {"GET", "HEAD"}


def test_more_than_one_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match="more than one parameter"):
        Routes().add(("GET",), "/a/{x}/{y}", hooks)


def test_headers_by_name_first_of_repeats_wins() -> None:
    raw = [(b"webhook-id", b"msg_1"), (b"content-type", b"application/json"), (b"webhook-id", b"msg_2")]
    assert headers_of({"headers": raw}) == {b"webhook-id": b"msg_1", b"content-type": b"application/json"}
