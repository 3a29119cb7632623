from __future__ import annotations

from pathlib import Path

import pytest

from voxgate.cli import check_exposure
from voxgate.config import load_settings
from voxgate.errors import ConfigError
from voxgate.settings import Limits, Settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "voxgate.toml"
    p.write_text(text)
    return p


def test_defaults_without_any_config() -> None:
    s = load_settings(None, {})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8780)
    gw = s.gateway("local", "default")
    assert gw is not None
    assert gw.tokens == ()
    assert gw.limits == Limits()
    assert s.store.url == "sqlite:///./voxgate.db"
    assert s.state.url == "memory://"
    assert s.relay.buffer_bytes == 1024 * 1024
    assert s.relay.connect_timeout_seconds == 10.0


def test_design_example_loads(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
[server]
host = "127.0.0.1"
port = 8780
[store]
url = "sqlite:///./voxgate.db"
[state]
url = "memory://"
[providers.openai]
url = "wss://api.openai.com/v1/realtime"
[providers.mymodel]
url = "wss://models.example.com/ws"
auth = { header = "Authorization", format = "Bearer {key}" }
[accounts.local.gateways.default]
tokens = [{ name = "ci", env = "VOXGATE_TOKEN" }]
keys = { openai = { env = "OPENAI_API_KEY" } }
limits = { max_connections = 100, messages_per_minute = 6000, max_message_bytes = 1048576, max_session_seconds = 3600, idle_seconds = 300 }
capture_payloads = false
[llm.ollama]
base_url = "http://127.0.0.1:11434/v1"
[apps.demo]
secret_env = "VOXGATE_APP_SECRET"
""",
    )
    s = load_settings(p, {"VOXGATE_TOKEN": "tok", "OPENAI_API_KEY": "sk-1"})
    gw = s.gateway("local", "default")
    assert gw is not None
    assert gw.tokens[0].name == "ci"
    assert gw.tokens[0].secret.value == "tok"
    assert gw.keys["openai"].value == "sk-1"
    assert s.llm["ollama"].base_url == "http://127.0.0.1:11434/v1"
    assert s.apps["demo"].secret.env == "VOXGATE_APP_SECRET"
    # VOXGATE_TOKEN is a secret, not an override key
    assert s.secret_values() == {"tok", "sk-1"}
    # secrets never show in a repr
    assert "tok'" not in repr(s)
    assert "sk-1" not in repr(s)


def test_env_overrides_nested_keys_and_parse_types(tmp_path: Path) -> None:
    env = {
        "VOXGATE_SERVER__PORT": "9000",
        "VOXGATE_ACCOUNTS__LOCAL__GATEWAYS__DEFAULT__CAPTURE_PAYLOADS": "true",
        "VOXGATE_ACCOUNTS__LOCAL__GATEWAYS__DEFAULT__LIMITS__IDLE_SECONDS": "30",
        "VOXGATE_RELAY__BUFFER_BYTES": "65536",
        "VOXGATE_STORE__URL": "sqlite:///x.db",
        "VOXGATE_CONFIG": "/ignored",
    }
    s = load_settings(None, env)
    assert s.server.port == 9000
    gw = s.gateway("local", "default")
    assert gw is not None
    assert gw.capture_payloads is True
    assert gw.limits.idle_seconds == 30.0
    assert s.relay.buffer_bytes == 65536
    assert s.store.url == "sqlite:///x.db"


def test_cli_overrides_win(tmp_path: Path) -> None:
    p = write(tmp_path, "[server]\nport = 1234\n")
    s = load_settings(p, {"VOXGATE_SERVER__PORT": "2345"}, overrides={"server.port": 3456})
    assert s.server.port == 3456


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[server]\nport = 'x'\n", {}, r"server\.port: expected an integer, got str 'x'"),
        ("[server]\nport = 70000\n", {}, r"server\.port: must be between 0 and 65535"),
        ("[server]\nprot = 1\n", {}, r"server\.prot: unknown key"),
        ("[sever]\nport = 1\n", {}, r"sever: unknown key"),
        ("", {"VOXGATE_SERVER__PORT": "abc"}, r"server\.port: .* \(from VOXGATE_SERVER__PORT\)"),
        ("[server]\nlog_format = 'xml'\n", {}, r"server\.log_format: must be one of text, json"),
        ("[store]\nurl = 'mysql://x'\n", {}, r"store\.url: must start with sqlite://"),
        ("[store]\nbatch_size = 0\n", {}, r"store\.batch_size: must be between 1 and 10000"),
        ("[store]\nqueue_max = 0\n", {}, r"store\.queue_max: must be >= 1"),
        ("[state]\nurl = 'http://x'\n", {}, r"state\.url: must start with memory:// or redis://"),
        ("[state]\nlease_seconds = 0\n", {}, r"state\.lease_seconds: must be >= 1"),
        ("[server]\ndrain_seconds = -1\n", {}, r"server\.drain_seconds: must be >= 0"),
        ("[cluster]\nsecret_env = 3\n", {}, r"cluster\.secret_env: expected a string"),
        ("[cluster]\nsecret = 'inline'\n", {}, r"cluster\.secret: unknown key"),
        ("[speech]\nnice = -5\n", {}, r"speech\.nice: must be between 0 and 19"),
        (
            "",
            {"VOXGATE_SPEECH__NICE": "20"},
            r"speech\.nice: must be between 0 and 19; got 20 \(from VOXGATE_SPEECH__NICE\)",
        ),
        ("[speech]\nnice = 'low'\n", {}, r"speech\.nice: expected an integer"),
        ("[local_llm]\nmodel = '7b'\n", {}, r"local_llm\.model: must be one of 1\.5b, 0\.5b"),
        ("[local_llm]\nthreads = 0\n", {}, r"local_llm\.threads: must be between 1 and 256"),
        ("[local_llm]\ncontexts = 100\n", {}, r"local_llm\.contexts: must be between 1 and 64"),
        ("[local_llm]\ncontext_tokens = 100\n", {}, r"local_llm\.context_tokens: must be between"),
        ("[local_llm]\nsize = '1.5b'\n", {}, r"local_llm\.size: unknown key"),
        ("[local_llm]\njudge_alone = 'yes'\n", {}, r"local_llm\.judge_alone: expected true or"),
        (
            "[speech.engines.w]\ntype = 'whisper'\nwindow = 'tiny'\n",
            {},
            r"speech\.engines\.w\.window",
        ),
        (
            "[speech.engines.w]\ntype = 'whisper'\npartials = 'x'\n",
            {},
            r"speech\.engines\.w\.partials",
        ),
        (
            "[accounts.local.gateways.default]\nlimits = { idle_seconds = -1 }\n",
            {},
            r"accounts\.local\.gateways\.default\.limits\.idle_seconds: must be >= 1",
        ),
        (
            "[accounts.local.gateways.default]\ntokens = [{ name = 'a' }]\n",
            {},
            r"tokens\[0\]: give env",
        ),
        (
            "[accounts.local.gateways.default]\ntokens = [{ name = 'a', value = 'x' }, { name = 'a', value = 'y' }]\n",
            {},
            r"tokens\[1\]\.name: duplicate token name 'a'",
        ),
        (
            "[accounts.local.gateways.default]\ntokens = 'abc'\n",
            {},
            r"tokens: expected a list of tables",
        ),
        (
            "[providers.x]\nurl = 'http://x'\n",
            {},
            r"providers\.x\.url: must be a ws:// or wss:// URL",
        ),
        (
            "[providers.x]\nurl = 'ws://x'\nauth = { format = 'no key' }\n",
            {},
            r"providers\.x\.auth\.format: must contain \{key\}",
        ),
        ("[accounts.'bad name'.gateways.g]\n", {}, r"accounts\.bad name: names may use only"),
        ("[server]\ntls_cert = 'a.pem'\n", {}, r"tls_cert and tls_key must be given together"),
        ("not toml [", {}, r"is not valid TOML"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_settings(p, env)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, "[server]\nport = 'x'\nhost = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(p, {})
    assert "server.port" in str(info.value)
    assert "server.host" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", {})


def test_unset_token_env_warns_and_fails_closed(tmp_path: Path) -> None:
    p = write(
        tmp_path, "[accounts.local.gateways.default]\ntokens = [{ name = 'ci', env = 'NOPE' }]\n"
    )
    s = load_settings(p, {})
    assert any("NOPE (not set)" in w and "matches nothing" in w for w in s.warnings())
    gw = s.gateway("local", "default")
    assert gw is not None
    assert gw.tokens  # still required: the gateway is not open


def test_per_token_limits_inherit_gateway_limits(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "[accounts.a.gateways.g]\nlimits = { idle_seconds = 10, max_connections = 7 }\n"
        "tokens = [{ name = 't', value = 'v', limits = { max_connections = 2 } }]\n",
    )
    gw = load_settings(p, {}).gateway("a", "g")
    assert gw is not None
    tl = gw.tokens[0].limits
    assert tl is not None
    assert (tl.max_connections, tl.idle_seconds) == (2, 10.0)
    # the default account/gateway still exists next to configured ones
    assert load_settings(p, {}).gateway("local", "default") is not None


def test_exposure_rule() -> None:
    check_exposure(load_settings(None, {}))  # loopback, open: fine
    exposed = load_settings(None, {}, overrides={"server.host": "0.0.0.0"})
    with pytest.raises(ConfigError, match=r"refusing to bind 0\.0\.0\.0"):
        check_exposure(exposed)
    check_exposure(
        load_settings(
            None, {}, overrides={"server.host": "0.0.0.0", "server.allow_unauthenticated": True}
        )
    )
    check_exposure(load_settings(None, {}, overrides={"server.host": "::1"}))


def test_settings_object_is_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.server.port = 1  # type: ignore[misc]


def test_malformed_environment_overrides_are_named() -> None:
    with pytest.raises(ConfigError, match=r"VOXGATE_SERVER____PORT: empty key segment"):
        load_settings(None, {"VOXGATE_SERVER____PORT": "1"})
    with pytest.raises(ConfigError, match=r"VOXGATE_SERVER__PORT__X: server\.port is not a table"):
        load_settings(None, {"VOXGATE_SERVER__PORT": "1", "VOXGATE_SERVER__PORT__X": "2"})


def test_realtime_default_model_is_checked_at_load(tmp_path: Path) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text('[realtime]\ndefault_model = "gpt-realtime"\nopenai_names = "proxy"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, {})
    assert "realtime.default_model: must be provider/model" in str(err.value)
    assert "realtime.openai_names: must be one of agent, relay" in str(err.value)
    cfg.write_text(
        '[llm.local]\nbase_url = "http://127.0.0.1:1/v1"\n'
        '[realtime]\ndefault_model = "local/qwen"\nopenai_names = "relay"\n'
        '[speech.aliases]\norpheus = "piper"\n'
    )
    settings = load_settings(cfg, {})
    assert settings.realtime.default_model == "local/qwen"
    assert settings.speech.aliases == {"orpheus": "piper"}
    cfg.write_text('[speech.aliases]\npiper = "whisper"\nkokoro = "nosuch"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, {})
    assert "speech.aliases.piper: 'piper' is an engine's own name" in str(err.value)
    assert "speech.aliases.kokoro: names no engine: 'nosuch'" in str(err.value)
