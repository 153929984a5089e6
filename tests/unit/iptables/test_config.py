"""Config tables: (argv, environ) -> IptablesConfig or the problem (flag, value, exit kind)."""
from __future__ import annotations

import pytest

from agent.flags import UsageError
from agent.iptables.config import ConfigError, parse_prefix, split_list

from ._support import load


@pytest.mark.parametrize(
    "argv, env, attr, expected",
    [
        ([], {}, "envoy_port", "15001"),
        (["-p", "16001"], {}, "envoy_port", "16001"),
        ([], {"ENVOY_PORT": "9"}, "envoy_port", "15001"),  # -p has no env var (Istio)
        ([], {"INBOUND_CAPTURE_PORT": "16006"}, "inbound_capture_port", "16006"),
        (["-z", "17006"], {"INBOUND_CAPTURE_PORT": "16006"}, "inbound_capture_port", "17006"),
        (["-e", "16008"], {}, "inbound_tunnel_port", "16008"),
        ([], {}, "proxy_uids", ("1337",)),  # ENVOY_USER istio-proxy -> 1337
        ([], {"ENVOY_USER": "app"}, "proxy_uids", ("1000",)),
        ([], {"ENVOY_USER": "nobody-here"}, "proxy_uids", ("1337",)),  # unknown account -> 1337
        ([], {"ENVOY_USER": "app"}, "proxy_gids", ("1000",)),  # -g defaults to the -u value
        (["-u", "3,4"], {}, "proxy_gids", ("3", "4")),
        (["-u", "3,4", "-g", "1,2"], {}, "proxy_gids", ("1", "2")),
        (["-u", "istio-proxy"], {}, "proxy_uids", ("istio-proxy",)),  # names kept; iptables resolves
        ([], {"PROXY_UID": "5", "PROXY_GID": "6"}, "proxy_gids", ("6",)),
        ([], {}, "tproxy", False),
        (["-m", "REDIRECT"], {}, "tproxy", False),
        (["-m", ""], {}, "tproxy", False),
        (["-m", "TPROXY"], {}, "tproxy", True),
        ([], {"ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY"}, "tproxy", True),
        (["-b", "*"], {}, "inbound_ports", ("*",)),
        (["-b", "80,,443,"], {}, "inbound_ports", ("80", "443")),  # empty items dropped
        (["-b", "80,80"], {}, "inbound_ports", ("80", "80")),  # no de-duplication
        (["-x", "", "-b", "*"], {}, "service_exclude_cidrs", ()),  # -x "" does not eat -b
        (["-i", "*"], {}, "service_cidrs", ("*",)),
        (["-i", "10.0.0.1/8,2001:DB8::/32"], {}, "service_cidrs", ("10.0.0.1/8", "2001:db8::/32")),
        (["-c", "eth1,eth+"], {}, "exclude_interfaces", ("eth1", "eth+")),
        (["-k", "eth1"], {"KUBE_VIRT_INTERFACES": "eth9"}, "kube_virt_interfaces", ("eth1",)),
        (["-t", "7", "-r", "70"], {}, "tproxy_mark", "7"),
        ([], {"ISTIO_INBOUND_TPROXY_ROUTE_TABLE": "70"}, "tproxy_route_table", "70"),
        (["--redirect-dns"], {}, "redirect_dns", True),
        ([], {"REDIRECT_DNS": "true"}, "redirect_dns", True),
        ([], {"ISTIO_META_DNS_CAPTURE": "true"}, "redirect_dns", True),
        ([], {"REDIRECT_DNS": "true", "ISTIO_META_DNS_CAPTURE": "false"}, "redirect_dns", False),  # alias wins
        (["--redirect-dns=false"], {"ISTIO_META_DNS_CAPTURE": "true"}, "redirect_dns", False),  # flag wins
        ([], {"INVALID_DROP": "true"}, "drop_invalid", True),
        ([], {"DROP_INVALID": "1", "INVALID_DROP": "0"}, "drop_invalid", False),
        ([], {"ISTIO_DUAL_STACK": "true"}, "dual_stack", True),
        ([], {"DUAL_STACK": "T"}, "dual_stack", True),
        ([], {"DRY_RUN": "maybe"}, "dry_run", False),  # bad env value ignored (Istio)
        (["-n"], {}, "dry_run", True),
        ([], {"CAPTURE_ALL_DNS": "true"}, "capture_all_dns", True),
        ([], {"IPTABLES_PROBE_PORT": "16002"}, "probe_port", 16002),
        (["--probe-timeout", "1m"], {}, "probe_timeout", 60.0),
        ([], {"VERIFY": "true"}, "verify", True),
        (["--reconcile", "--cleanup-only", "--force-apply", "--skip-rule-apply", "--run-validation"], {},
         "reconcile", True),
        ([], {"FORCE_IPTABLES_BINARY": "nft"}, "force_iptables_binary", "nft"),
        (["--force-iptables-binary", "legacy"], {}, "force_iptables_binary", "legacy"),
        ([], {}, "owner_groups_include", None),
        ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"}, "owner_groups_include", ("java", "202")),
        ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ""}, "owner_groups_include", ()),
        ([], {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp"}, "owner_groups_exclude", ("888", "ftp")),
        ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"}, "loopback_cidr", "127.0.0.1/8"),
        ([], {"DRY_RUN_FILE_PATH": "/tmp/x"}, "dry_run_file_path", "/tmp/x"),
        (["--log_output_level=default:debug", "--log_as_json"], {}, "envoy_port", "15001"),  # accepted
        (["positional", "-p", "1"], {}, "envoy_port", "1"),  # positional args ignored
    ],
)
def test_values(argv, env, attr, expected):
    assert getattr(load(argv, env), attr) == expected


USAGE = [
    (["-p", "0"], "-p/--envoy-port", "0"),
    (["-p", "abc"], "-p/--envoy-port", "abc"),
    (["-z", "65536"], "-z/--inbound-capture-port", "65536"),
    (["-e", " 15008"], "-e/--inbound-tunnel-port", " 15008"),
    (["-b", "80,*"], "-b/--istio-inbound-ports", "80,*"),
    (["-b", "*,"], "-b/--istio-inbound-ports", "*,"),
    (["-b", "1:100"], "-b/--istio-inbound-ports", "1:100"),
    (["-d", "x"], "-d/--istio-local-exclude-ports", "x"),
    (["-q", "-1"], "-q/--istio-outbound-ports", "-1"),
    (["-o", "99999"], "-o/--istio-local-outbound-ports-exclude", "99999"),
    (["-x", "*"], "-x/--istio-service-exclude-cidr", "*"),
    (["-x", "10.0.0.0"], "-x/--istio-service-exclude-cidr", "10.0.0.0"),
    (["-i", "*,10.0.0.0/8"], "-i/--istio-service-cidr", "*,10.0.0.0/8"),
    (["-i", "10.0.0.0/33"], "-i/--istio-service-cidr", "10.0.0.0/33"),
    (["-i", "10.0.0.256/8"], "-i/--istio-service-cidr", "10.0.0.256/8"),
    (["-i", "fe80::1%eth0/64"], "-i/--istio-service-cidr", "fe80::1%eth0/64"),
    (["-i", "-b"], "-i/--istio-service-cidr", "-b"),  # `-x` losing its "" swallows the next flag
    (["-m", "tproxy"], "-m/--istio-inbound-interception-mode", "tproxy"),
    (["-u", "no-such-user"], "-u/--proxy-uid", "no-such-user"),
    (["-g", "no-such-group"], "-g/--proxy-gid", "no-such-group"),
    (["-u", "app"], "-g/--proxy-gid", "app"),  # -g inherits -u; no group named app
    (["-t", "0x10"], "-t/--istio-inbound-tproxy-mark", "0x10"),
    (["-r", "abc"], "-r/--istio-inbound-tproxy-route-table", "abc"),
    (["--force-iptables-binary", "iptables"], "--force-iptables-binary", "iptables"),
    (["-c", "a b"], "-c/--istio-exclude-interfaces", "a b"),
    (["-k", "waytoolonginterface"], "-k/--kube-virt-interfaces", "waytoolonginterface"),
    (["--iptables-probe-port", "0"], "--iptables-probe-port", "0"),
]


@pytest.mark.parametrize("argv, setting, value", USAGE)
def test_usage_problems(argv, setting, value):
    with pytest.raises(ConfigError) as e:
        load(argv)
    assert e.value.usage
    first = e.value.problems[0]
    assert (first.setting, first.value) == (setting, value)
    assert len(e.value.problems) == 1
    assert setting in str(first) and f'"{value}"' in str(first)


@pytest.mark.parametrize(
    "env, setting",
    [
        ({"INBOUND_CAPTURE_PORT": "0"}, "-z/--inbound-capture-port (env INBOUND_CAPTURE_PORT)"),
        ({"ISTIO_SERVICE_CIDR": "bad"}, "-i/--istio-service-cidr (env ISTIO_SERVICE_CIDR)"),
        ({"ISTIO_INBOUND_INTERCEPTION_MODE": "X"}, "-m/--istio-inbound-interception-mode (env ISTIO_INBOUND_INTERCEPTION_MODE)"),
        ({"FORCE_IPTABLES_BINARY": "both"}, "--force-iptables-binary (env FORCE_IPTABLES_BINARY)"),
    ],
)
def test_usage_problem_names_the_env_var(env, setting):
    with pytest.raises(ConfigError) as e:
        load([], env)
    assert e.value.usage and e.value.problems[0].setting == setting


@pytest.mark.parametrize(
    "env, var",
    [
        ({"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(map(str, range(65)))}, "ISTIO_OUTBOUND_OWNER_GROUPS"),
        ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.1/8"}, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
        ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/7"}, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
        ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1"}, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
        ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "::1/128"}, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
    ],
)
def test_run_problems_exit_1_like_istio(env, var):
    with pytest.raises(ConfigError) as e:
        load([], env)
    assert not e.value.usage
    assert e.value.problems[0].setting == var


def test_64_owner_groups_are_fine_and_exclude_has_no_limit():
    load([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(map(str, range(64))),
              "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": ",".join(map(str, range(100)))})


def test_usage_problems_come_first_and_all_are_reported():
    with pytest.raises(ConfigError) as e:
        load(["-p", "0", "-i", "x"], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "bad"})
    assert [p.usage for p in e.value.problems] == [True, True, False]


@pytest.mark.parametrize("argv", [["--bogus"], ["-y"], ["--dry-run=maybe"], ["--iptables-probe-port", "x"],
                                  ["--probe-timeout", "5"], ["-p"]])
def test_command_line_errors_are_usage_errors(argv):
    with pytest.raises(UsageError):
        load(argv)


@pytest.mark.parametrize(
    "text, expected",
    [("10.0.0.0/8", "10.0.0.0/8"), ("10.0.0.1/8", "10.0.0.1/8"), ("2001:DB8::/32", "2001:db8::/32"),
     ("::127.0.0.53/128", "::7f00:35/128"), ("0.0.0.0/0", "0.0.0.0/0"), ("::/0", "::/0")],
)
def test_parse_prefix_keeps_host_bits(text, expected):
    assert parse_prefix(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.0", "10.0.0.0/", "10.0.0.0/08", "10.0.0.0/+8", "010.0.0.0/8",
                                  "::1/129", "x/8", "fe80::1%lo/64", "10.0.0.0/٨"])
def test_parse_prefix_rejects(text):
    with pytest.raises(ValueError):
        parse_prefix(text)


def test_split_list():
    assert split_list("6000,7000,") == ("6000", "7000")
    assert split_list("") == ()
    assert split_list(" a, b") == (" a", " b")  # no trimming, as Istio


@pytest.mark.parametrize("value", ["80\n81", "eth0\r", "10.0.0.0/8\x00"])
def test_problem_is_one_line_whatever_the_value(value):
    for flag in ("-b", "-c", "-i"):
        with pytest.raises(ConfigError) as e:
            load([flag, value])
        assert all("\n" not in str(p) and "\r" not in str(p) for p in e.value.problems)
