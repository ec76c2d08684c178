"""The Ansible deployment (roles/, inventories/, playbooks/): lint, syntax, vault, role layout.

Every command runs from the venv that runs pytest (its bin directory first on PATH), the way
`make test` installs the `deploy` extra. The molecule scenarios are in test_ansible_molecule.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
INVENTORIES = ["dev", "staging", "production"]
PLAYBOOKS = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))
ROLES = ["levity", "fluentd", "elasticsearch", "kibana", "prometheus", "postgresql", "haproxy"]
TEST_VAULT_PASSWORD = Path(__file__).with_name("vault-password.test-only")


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0", "NO_COLOR": "1",
                "ANSIBLE_DEPRECATION_WARNINGS": "0"})
    return env


def run(*cmd: str, cwd: Path = ROOT, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run a venv tool; on failure the test fails showing the command's output."""
    if shutil.which(cmd[0], path=tool_env()["PATH"]) is None:
        pytest.fail(f"{cmd[0]} is not installed: pip install -e '.[deploy]' (make test does)")
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        output = (result.stdout + "\n" + result.stderr).strip()
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{output[-12000:]}", pytrace=False)
    return result


def test_yamllint_passes():
    run("yamllint", "--strict", ".")


def test_ansible_lint_passes_with_the_production_profile():
    config = yaml.safe_load((ROOT / ".config" / "ansible-lint.yml").read_text())
    assert config["profile"] == "production"
    result = run("ansible-lint", "--offline", timeout=600)
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(inventory, playbook):
    run("ansible-playbook", "-i", f"inventories/{inventory}", "--syntax-check", f"playbooks/{playbook}")


def test_site_imports_every_part():
    site = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
    assert {play["ansible.builtin.import_playbook"] for play in site} == {
        "levity.yml", "fluentd.yml", "elasticsearch.yml", "kibana.yml", "prometheus.yml", "postgresql.yml",
        "haproxy.yml"}


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_each_inventory_names_its_fluentd_profile(inventory):
    main = yaml.safe_load((ROOT / "inventories" / inventory / "group_vars" / "all" / "main.yml").read_text())
    assert main["fluentd_profile"] == inventory
    assert (ROOT / "profiles" / f"{inventory}.yaml").is_file()


@pytest.mark.parametrize("inventory", ["staging", "production"])
def test_vault_example_covers_the_secrets_and_decrypts(inventory, tmp_path):
    """Encrypt the documented example with a test-only password; the secrets then resolve."""
    source = ROOT / "inventories" / inventory
    secrets = (source / "group_vars" / "all" / "secrets.yml").read_text()
    example = yaml.safe_load((source / "group_vars" / "all" / "vault.yml.example").read_text())
    assert set(re.findall(r"\bvault_\w+", secrets)) <= set(example), "secrets.yml uses a vault_ variable the example lacks"
    assert not (source / "group_vars" / "all" / "vault.yml").exists() or \
        (source / "group_vars" / "all" / "vault.yml").read_text().startswith("$ANSIBLE_VAULT"), "a plain vault.yml"

    copy = tmp_path / inventory
    shutil.copytree(source, copy)
    vault = copy / "group_vars" / "all" / "vault.yml"
    shutil.copy(copy / "group_vars" / "all" / "vault.yml.example", vault)
    run("ansible-vault", "encrypt", "--vault-password-file", str(TEST_VAULT_PASSWORD), str(vault))
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    inventory_hosts = json.loads(run("ansible-inventory", "-i", str(copy), "--vault-password-file",
                                     str(TEST_VAULT_PASSWORD), "--list").stdout)
    host = next(h for group, members in inventory_hosts.items() if group.startswith("fluentd")
                for h in (members.get("hosts", []) if isinstance(members, dict) else []))
    result = run("ansible", host, "-i", str(copy), "--vault-password-file", str(TEST_VAULT_PASSWORD),
                 "-m", "ansible.builtin.debug", "-a", "var=fluentd_secret_environment.FLUENTD_SHARED_KEY")
    assert "CHANGE-ME-long-random-string" in result.stdout


@pytest.mark.parametrize("role", ROLES)
def test_role_layout(role):
    """prometheus-community layout: defaults, typed argument specs, split tasks, handlers, managed templates."""
    path = ROOT / "roles" / role
    for part in ["defaults/main.yml", "meta/main.yml", "meta/argument_specs.yml", "handlers/main.yml",
                 "tasks/main.yml", "tasks/preflight.yml", "tasks/install.yml", "tasks/configure.yml"]:
        assert (path / part).is_file(), f"roles/{role}/{part} is missing"
    defaults = yaml.safe_load((path / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((path / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options), f"defaults without a spec: {set(defaults) - set(options)}; " \
                                          f"specs without a default: {set(options) - set(defaults)}"
    for name, spec in options.items():
        assert spec.get("type") and spec.get("description"), f"{role}: {name} needs a type and a description"
    templates = list((path / "templates").glob("*.j2"))
    assert templates
    for template in templates:
        text = template.read_text()
        if text.startswith("#!"):  # a script keeps its interpreter line first
            text = text.partition("\n")[2]
        assert text.startswith("{{ ansible_managed | comment"), f"{template} lacks the ansible_managed header"


def test_no_copy_of_the_shared_files_in_the_roles():
    """share/ and the Fluentd templates exist once: the roles read them where they are."""
    shared = {p.read_bytes() for top in ("share", "templates") for p in (ROOT / top).rglob("*") if p.is_file()}
    shared_names = {p.name for top in ("share", "templates") for p in (ROOT / top).rglob("*") if p.is_file()}
    for path in (ROOT / "roles").rglob("*"):
        if path.is_file():
            assert path.name not in shared_names and path.read_bytes() not in shared, f"{path} copies a shared file"


def test_filter_renders_exactly_what_the_generator_renders():
    sys.path.insert(0, str(ROOT / "roles" / "fluentd" / "filter_plugins"))
    try:
        import levity_fluentd
    finally:
        sys.path.pop(0)
    from levity.fluentconf import render_file

    for name in INVENTORIES:
        assert levity_fluentd.levity_fluentd_render(name) == render_file(ROOT / "profiles" / f"{name}.yaml")
        info = levity_fluentd.levity_fluentd_profile_info(name)
        assert info["problems"] == []
    production = levity_fluentd.levity_fluentd_profile_info("production")
    assert production["gems"] == ["fluent-plugin-elasticsearch", "fluent-plugin-prometheus", "fluent-plugin-s3"]
    assert "FLUENTD_SHARED_KEY" in production["environment"]
    assert "/etc/fluent/tls/fluentd.key" in production["files"]
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="no profile file"):
        levity_fluentd.levity_fluentd_render("no-such-profile")


@pytest.mark.parametrize("inventory", ["staging", "production"])
def test_production_and_staging_are_secure_by_default(inventory):
    """What anyone reaching port 9000 or 24224 of these hosts finds: authentication, TLS, no strangers."""
    result = run("ansible-inventory", "-i", f"inventories/{inventory}", "--list")
    hostvars = json.loads(result.stdout)["_meta"]["hostvars"]
    levity_hosts = yaml.safe_load((ROOT / "inventories" / inventory / "hosts.yml").read_text())
    for host in levity_hosts["all"]["children"]["levity"]["hosts"]:
        settings = hostvars[host]
        assert settings["levity_security_profile"] in (2, 3)
        assert settings["levity_unknown_charge_points"] == "refuse"
        assert settings["levity_boot_policy"] != "accept"
        environment = settings["levity_extra_environment"]
        files = {f["path"]: f["content"] for f in settings["levity_files"]}
        to_fluentd = ["FLUENTD_TLS_CA"]
        if settings["levity_fluentd_host"] in ("127.0.0.1", "localhost", "::1"):
            # Levity hands its events to the forwarder on its own host; the hop off the host
            # is the forwarder's, with TLS and the shared key (checked below).
            assert settings["fluentd_profile"] == "forwarder"
            to_fluentd = []
        else:
            assert settings["levity_fluentd_tls"] is True
            assert settings["levity_fluentd_shared_key"] == "{{ vault_fluentd_shared_key }}"
        for variable in ["LEVITY_TLS_CERT", "LEVITY_TLS_KEY", *to_fluentd]:
            assert files[environment[variable]].startswith("{{ vault_"), variable  # from the vault
    from levity.fluentconf import load_profile

    forward = load_profile(ROOT / "profiles" / f"{inventory}.yaml").doc.sources.forward
    assert forward.tls is not None and forward.tls.enabled and forward.security is not None
    forwarder = load_profile(ROOT / "profiles" / "forwarder.yaml").doc
    assert forwarder.sources.forward.bind == "127.0.0.1"
    for output in forwarder.outputs:  # as the profile spells them
        assert output["tls"].get("enabled", True) and output["shared_key"], output["name"]


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_a_balancer_on_another_host_reaches_the_operator_api(inventory):
    """HAProxy routes API requests to the Levity host holding the charger: on loopback it could not."""
    result = run("ansible-inventory", "-i", f"inventories/{inventory}", "--list")
    inventory_data = json.loads(result.stdout)
    balancers = set(inventory_data.get("haproxy", {}).get("hosts", []))
    if not balancers:
        pytest.skip(f"{inventory} has no balancer")
    for host in inventory_data["levity"]["hosts"]:
        settings = inventory_data["_meta"]["hostvars"].get(host, {})
        if host not in balancers:
            assert settings.get("levity_api_host", "127.0.0.1") not in ("127.0.0.1", "localhost", "::1"), host


def test_dev_keeps_the_development_defaults():
    main = yaml.safe_load((ROOT / "inventories" / "dev" / "group_vars" / "all" / "main.yml").read_text())
    defaults = yaml.safe_load((ROOT / "roles" / "levity" / "defaults" / "main.yml").read_text())
    assert "levity_security_profile" not in main and defaults["levity_security_profile"] == 0
    assert defaults["levity_boot_policy"] == "accept"


def _filter_module():
    sys.path.insert(0, str(ROOT / "roles" / "fluentd" / "filter_plugins"))
    try:
        import levity_fluentd
    finally:
        sys.path.pop(0)
    return levity_fluentd


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
def test_role_creates_only_the_static_prefix_of_a_path_template(profile):
    """out_file's path (/var/log/fluent/ocpp/${tag}/%Y-%m-%d) is a file template, not a directory:
    the role creates what precedes the first placeholder and leaves the rest to Fluentd."""
    directories = _filter_module().levity_fluentd_profile_info(profile)["directories"]
    for directory in directories:
        assert not re.search(r"[$%*{}]", directory), f"{profile}: the role would create {directory!r} literally"
    if profile in ("file", "billing"):
        assert "/var/log/fluent/ocpp" in directories


def test_static_prefix_of_paths():
    module = _filter_module()
    assert module._static_prefix("/var/log/fluent/ocpp/${tag}/%Y-%m-%d", names_a_file=True) == "/var/log/fluent/ocpp"
    assert module._static_prefix("/var/log/fluent/ocpp/events", names_a_file=True) == "/var/log/fluent/ocpp"
    assert module._static_prefix("/var/log/fluent/buffer/es", names_a_file=False) == "/var/log/fluent/buffer/es"
    assert module._static_prefix("/var/log/fluent/buffer/es.*.log", names_a_file=False) == "/var/log/fluent/buffer"
