import pytest

from microstackd import errors
from microstackd.trust import names


@pytest.mark.parametrize("name", ["node-1", "a", "ctl", "n" * 63])
def test_good_names(name: str) -> None:
    assert names.node_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "x-", "Node", "a_b", "n" * 64, "a.b", "compute"])
def test_bad_names_name_the_field(name: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="node name"):
        names.node_name(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 10002)),
        ("10.0.0.1:7000", ("10.0.0.1", 7000)),
        ("[fd00::1]:7000", ("fd00::1", 7000)),
        ("fd00::1", ("fd00::1", 10002)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert names.host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "example", "1.2.3", "1.2.3.4:0", "1.2.3.4:99999", "1.2.3.4:x", "[fd00::1", "0.0.0.0"],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="control address"):
        names.host_port(text)


def test_password_limits() -> None:
    with pytest.raises(errors.InvalidArgument):
        names.password("")
    with pytest.raises(errors.InvalidArgument):
        names.password("x" * 2000)
