"""[cache] schema: defaults, services, errors that name the key and the value."""

from __future__ import annotations

import tomllib

import pytest

from bifrost import config as cfgmod

pytestmark = pytest.mark.unit

GOOD = """
[cache]
refresh_s = 2
max_stale_s = 20
metrics_port = 9200
[[cache.service]]
address = "192.0.2.10"
port = 27015
server = "10.0.0.5"
[[cache.service]]
address = "192.0.2.10"
port = 27016
no_challenge = true
on_miss = "pass"
"""


def parse(text: str):
    return cfgmod.parse(tomllib.loads(text)).cache


def test_good_config_and_defaults():
    c = parse(GOOD)
    assert c.refresh_s == 2.0 and c.ttl_s == 4.0 and c.max_stale_s == 20.0
    assert c.device == "/dev/bifrost_nf" and c.metrics_port == 9200
    a, b = c.services
    assert (str(a.server), a.server_port, a.on_miss) == ("10.0.0.5", 27015, "drop")
    assert (str(b.server), b.no_challenge, b.on_miss) == ("192.0.2.10", True, "pass")


def test_example_config_parses():
    from bifrost.paths import SOURCE_ROOT

    cache = cfgmod.load(SOURCE_ROOT / "etc" / "bifrost.example.toml").cache
    assert cache is not None and cache.services, "the example configures [[cache.service]]"
    assert all(s.port for s in cache.services)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cache]\nrefresh_s = 0", "cache.refresh_s = 0"),
        ("[cache]\nbogus = 1", "cache.bogus: unknown key"),
        ('[[cache.service]]\naddress = "1.2.3"\nport = 1', "cache.service[0].address = '1.2.3'"),
        ('[[cache.service]]\naddress = "1.2.3.4"\nport = 0', "cache.service[0].port = 0"),
        ('[[cache.service]]\naddress = "1.2.3.4"\nport = 1\non_miss = "x"', "on_miss = 'x'"),
        ('[[cache.service]]\naddress = "1.2.3.4"\nport = 1\n'
         '[[cache.service]]\naddress = "1.2.3.4"\nport = 1',
         "cache.service[1]: 1.2.3.4:1 is configured twice"),
        ("[cache]\nrate_burst = 0", "cache.rate_burst = 0"),
    ],
)  # fmt: skip
def test_errors_name_key_and_value(text, message):
    with pytest.raises(cfgmod.ConfigError) as exc:
        parse(text)
    assert message in str(exc.value)
