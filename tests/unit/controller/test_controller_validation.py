"""Input checks of the controller."""

from __future__ import annotations

import pytest

from chital.controller import validation as v
from chital.controller.hosts import validate_address
from chital.errdefs import InvalidArgument


@pytest.mark.parametrize("name", ["a", "web-1", "a.b_c-d", "0", "x" * 63, "0" * 31, "a" * 33, "g" + "0" * 31])
def test_good_names(name: str) -> None:
    assert v.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 64, "-a", "a-", "A", "a b", "a/b", "..", ".a", "é", "a\x00"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        v.validate_name(name)


@pytest.mark.parametrize("name", ["0" * 32, "0123456789abcdef0123456789abcdef"])
def test_uid_shaped_names_are_refused(name: str) -> None:
    """Lookups try the uid first: a name shaped like one could shadow another container's uid."""
    with pytest.raises(InvalidArgument, match="looks like a uid"):
        v.validate_name(name)


@pytest.mark.parametrize("rid", ["", "r" * 129, "has space", "tab\t", "ü"])
def test_bad_request_ids(rid: str) -> None:
    with pytest.raises(InvalidArgument):
        v.validate_request_id(rid)


def test_request_id_bounds() -> None:
    assert v.validate_request_id("r" * 128)
    assert v.validate_request_id("~!#")


@pytest.mark.parametrize(
    "labels",
    [
        {"": "v"},
        {"k" * 64: "v"},
        {"k": "v" * 257},
        {"-k": "v"},
        {"k": "a,b"},
        {"k": "a=b"},
        {f"k{i}": "v" for i in range(65)},
    ],
)
def test_bad_labels(labels: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        v.validate_labels(labels)


@pytest.mark.parametrize("path", ["srv", "/a/../b", "/..", "../x", "/a/\x00"])
def test_bad_paths(path: str) -> None:
    with pytest.raises(InvalidArgument):
        v.validate_path(path, "root")


def test_good_paths() -> None:
    assert v.validate_path("", "root") == ""
    assert v.validate_path("/srv/a..b/c", "root") == "/srv/a..b/c"


@pytest.mark.parametrize("sig", [0, -1, 65, 1000])
def test_bad_signals(sig: int) -> None:
    with pytest.raises(InvalidArgument):
        v.validate_signal(sig)


def test_argv_and_env() -> None:
    assert v.validate_argv(["sh", "-c", "true"]) == ("sh", "-c", "true")
    for argv in ([], [""], ["a\x00"]):
        with pytest.raises(InvalidArgument):
            v.validate_argv(argv)
    for env in ({"": "v"}, {"A=B": "v"}, {"A": "\x00"}):
        with pytest.raises(InvalidArgument):
            v.validate_env(env)


def test_page_size() -> None:
    assert v.page_size(0) == 100
    assert v.page_size(1000) == 1000
    for bad in (-1, 1001):
        with pytest.raises(InvalidArgument):
            v.page_size(bad)


def test_label_selector() -> None:
    assert v.parse_label_selector("a=1, b=2") == {"a": "1", "b": "2"}
    assert v.parse_label_selector("") == {}
    for bad in ("a", "=1", "a=1,b"):
        with pytest.raises(InvalidArgument):
            v.parse_label_selector(bad)


@pytest.mark.parametrize("address", ["127.0.0.1:7444", "host-1.example:1", "[::1]:65535"])
def test_good_addresses(address: str) -> None:
    assert validate_address(address) == address


@pytest.mark.parametrize("address", ["", "host", "host:0", "host:65536", ":80", "a b:1", "h:p"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_address(address)
