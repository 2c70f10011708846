"""`kubeguard manifests`, `deploy/` and the Helm chart: one source of truth, valid objects.

The chart is rendered by real Helm (helm-python-sdk: Helm's Go SDK as a C library) and compared
object by object with `kubeguard manifests` for the same settings."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from helm_python.chart import Chart
from helm_python.errors import HelmError

from kubeguard import manifests as m
from kubeguard.cli import cli
from kubeguard.config import ConfigError
from kubeguard.plugins import default_registry

from .conftest import REPO, probe_registry

CHART = REPO / "charts" / "kubeguard"
SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): "certificate.cert-manager.io.json",
    ("cert-manager.io/v1", "Issuer"): "issuer.cert-manager.io.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com.json",
}
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
HELM_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart")
ALL_GATES = ",".join(f"{p.gate}=true" for p in default_registry().plugins)


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_SCHEMAS:
            schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
            jsonschema.validate(obj, schema)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


@cache
def chart() -> Chart:
    return Chart.load(str(CHART))


def helm(values: dict[str, Any] | None = None, namespace: str = "kubeguard-system") -> list[Any]:
    rendered = chart().render(values=values, name="kubeguard", namespace=namespace)
    objects = []
    for name, text in sorted(rendered.items()):
        if name.endswith(".yaml"):
            objects += load_docs(text)
    for obj in objects:
        for label in HELM_LABELS:
            obj["metadata"].get("labels", {}).pop(label, None)
    return objects


def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for obj in objects:
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        assert key not in out, f"duplicate object {key}"
        out[key] = obj
    return out


def assert_same(helm_objects: list[Any], cli_objects: list[Any]) -> None:
    expected = by_key([o for o in cli_objects if o["kind"] != "Namespace"])
    actual = by_key(helm_objects)
    assert sorted(actual) == sorted(expected)
    for key, obj in expected.items():
        assert actual[key] == obj, f"{key} differs between the chart and kubeguard manifests"


# ------------------------------------------------------------------------ one source of truth


def test_deploy_and_chart_files_are_the_generated_ones() -> None:
    files = m.generated_files()
    stale = [rel for rel, text in files.items() if (REPO / rel).read_text() != text]
    assert not stale, (
        f"generated files differ: {stale}; run `kubeguard manifests --write-defaults .`"
    )
    for d in m.GENERATED_DIRS:
        on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / d).iterdir() if p.is_file()}
        assert on_disk <= set(files), f"unexpected files in {d}: {on_disk - set(files)}"
    # The seed's `kubectl apply -f deploy/` must not meet a kustomization.yaml.
    assert not (REPO / "deploy" / "kustomization.yaml").exists()


def test_write_generated_regenerates_and_removes_stale_files(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "99-old.yaml").write_text(m.GENERATED_HEADER + "{}\n")
    (tmp_path / "deploy" / "mine.yaml").write_text("kind: ConfigMap\n")  # not generated: kept
    changed = m.write_generated(tmp_path)
    assert "deploy/99-old.yaml (removed)" in changed
    assert (tmp_path / "deploy" / "mine.yaml").exists()
    assert m.write_generated(tmp_path) == []


def test_kustomizations_list_only_their_own_files() -> None:
    for overlay in ("cert-manager", "monitoring"):
        directory = REPO / "deploy" / overlay
        kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
        jsonschema.validate(kust, json.loads((SCHEMAS / "kustomization.json").read_text()))
        for rel in kust["resources"]:
            assert (
                "/" not in rel and (directory / rel).is_file()
            )  # no ../: LoadRestrictionsRootOnly
        objects = [o for rel in kust["resources"] for o in load_docs((directory / rel).read_text())]
        validate(objects)
    cm = [
        o
        for rel in yaml.safe_load((REPO / "deploy/cert-manager/kustomization.yaml").read_text())[
            "resources"
        ]
        for o in load_docs((REPO / "deploy/cert-manager" / rel).read_text())
    ]
    assert {o["kind"] for o in cm} >= {"Issuer", "Certificate", "Deployment"}
    for config in (o for o in cm if o["kind"].endswith("WebhookConfiguration")):
        annotation = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert annotation == "kubeguard-system/kubeguard-serving-cert"
    deployment = next(o for o in cm if o["kind"] == "Deployment")
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "KUBEGUARD_SELF_SIGNED" not in env


# ------------------------------------------------------------------------ objects


@pytest.mark.parametrize("cert_mode", ["self-signed", "cert-manager"])
@pytest.mark.parametrize("gates", ["", ALL_GATES, "PodEvictionProtection=false"])
def test_every_rendering_is_valid(cert_mode: str, gates: str) -> None:
    opts = m.options_from_settings({"feature_gates": gates}, cert_mode=cert_mode, monitoring=True)
    objects = m.render(opts).objects
    validate(objects)
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace" and kinds.count("Deployment") == 1
    if gates == "PodEvictionProtection=false":
        assert "ValidatingWebhookConfiguration" not in kinds


def test_deploy_defaults_hold_the_promised_shape() -> None:
    objects = by_key(
        [o for p in sorted((REPO / "deploy").glob("*.yaml")) for o in load_docs(p.read_text())]
    )
    validate(list(objects.values()))
    deploy = objects[("Deployment", "kubeguard-system", "kubeguard")]["spec"]
    pod = deploy["template"]["spec"]
    container = pod["containers"][0]
    assert deploy["replicas"] == 2 and pod["priorityClassName"] == "system-cluster-critical"
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "https",
        "scheme": "HTTPS",
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBEGUARD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KUBEGUARD_SELF_SIGNED"]["value"] == "true"
    assert env["NODE_NOTREADY_THRESHOLD"]["value"] == "3"
    assert ("PodDisruptionBudget", "kubeguard-system", "kubeguard") in objects
    service = objects[("Service", "kubeguard-system", "kubeguard")]["spec"]["ports"][0]
    assert (service["port"], service["targetPort"]) == (443, "https")
    config = objects[("ValidatingWebhookConfiguration", "", "pod-eviction-protection")]
    for hook in config["webhooks"]:
        assert hook["timeoutSeconds"] == 5 and hook["sideEffects"] == "None"
        assert "caBundle" not in hook["clientConfig"]  # kubeguard patches it (seed 002)
        (excluded,) = hook["namespaceSelector"]["matchExpressions"]
        assert excluded == {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", "kubeguard-system"],
        }
    role = objects[("ClusterRole", "", "kubeguard")]["rules"]
    patch_rule = next(r for r in role if "validatingwebhookconfigurations" in r["resources"])
    assert patch_rule["resourceNames"] == ["pod-eviction-protection"]
    assert patch_rule["verbs"] == ["get", "patch"]


def test_webhooks_come_from_the_plugins_entries() -> None:
    registry = probe_registry()
    opts = m.options_from_settings(
        {"feature_gates": "MutatingProbe=true", "sidecar_label": "example.com/probe"},
        failure_policies={"pods.mutating-probe.kubeguard.io": "Fail"},
        excluded_namespaces=("kube-system", "monitoring"),
    )
    configs = {c["metadata"]["name"]: c for c in m.render(opts, registry).files["40-webhooks.yaml"]}
    assert set(configs) == {"pod-eviction-protection", "kubeguard-mutating"}
    (mutating,) = configs["kubeguard-mutating"]["webhooks"]
    assert mutating["failurePolicy"] == "Fail" and mutating["reinvocationPolicy"] == "Never"
    assert mutating["objectSelector"] == {"matchLabels": {"example.com/probe": "true"}}
    assert mutating["namespaceSelector"]["matchExpressions"][-1]["values"] == [
        "kube-system",
        "kubeguard-system",
        "monitoring",
    ]
    (validating,) = configs["pod-eviction-protection"]["webhooks"]
    assert validating["clientConfig"]["service"]["path"] == "/validate"
    assert validating["matchConditions"][0]["name"] == "not-kubelet"


def test_bad_options_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="unknown feature gate"):
        m.render(m.options_from_settings({"feature_gates": "Nope=true"}))
    with pytest.raises(ConfigError, match="--failure-policy names unknown webhook"):
        m.render(m.ManifestOptions(failure_policies={"nope.example.com": "Ignore"}))
    with pytest.raises(ConfigError, match="--local"):
        m.options_from_settings({"local": True})
    with pytest.raises(ConfigError, match="--cert-mode"):
        m.options_from_settings({"self_signed": True})
    with pytest.raises(ConfigError, match="NODE_NOTREADY_THRESHOLD"):
        m.options_from_settings({"notready_threshold": "many"})


def test_cli_prints_manifests_and_reports_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "manifests",
            "--notready-threshold",
            "10%",
            "--break-glass-groups",
            "sre,oncall",
            "--namespace",
            "guard",
            "--cert-mode",
            "cert-manager",
        ],
        env={"NODE_NOTREADY_THRESHOLD": "99"},  # the shell's environment is not read
    )
    assert result.exit_code == 0, result.output
    objects = load_docs(result.output)
    validate(objects)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["NODE_NOTREADY_THRESHOLD"] == "10%" and env["BREAK_GLASS_GROUPS"] == "sre,oncall"
    assert deployment["metadata"]["namespace"] == "guard"
    bad = runner.invoke(cli, ["manifests", "--feature-gates", "Bogus=true"])
    assert bad.exit_code == 2 and "unknown feature gate" in bad.output
    out = runner.invoke(cli, ["manifests", "--output-dir", str(tmp_path / "out")])
    assert out.exit_code == 0 and (tmp_path / "out" / "40-webhooks.yaml").exists()


# ------------------------------------------------------------------------ Helm chart


def test_chart_defaults_match_deploy() -> None:
    cli_objects = [
        o for p in sorted((REPO / "deploy").glob("*.yaml")) for o in load_docs(p.read_text())
    ]
    assert_same(helm(), cli_objects)


VARIANTS: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (helm values, kubeguard manifests settings, other manifest options)
    ({"certMode": "cert-manager"}, {}, {"cert_mode": "cert-manager"}),
    (
        {"featureGates": {p.gate: True for p in default_registry().plugins}},
        {"feature_gates": ALL_GATES},
        {},
    ),
    (
        {
            "featureGates": {"PodEvictionProtection": True, "SidecarInjection": True},
            "config": {
                "NODE_NOTREADY_THRESHOLD": "10%",
                "NODE_NOTREADY_WINDOW": "2m",
                "BREAK_GLASS_GROUPS": ["sre", "oncall"],
                "SIDECAR_LABEL": "example.com/sidecar",
                "REDRIVE": False,
                "REDRIVE_RATE": 5,
            },
            "failurePolicies": {"pods.pod-eviction-protection.kubeguard.io": "Fail"},
            "excludedNamespaces": ["kube-system", "monitoring"],
            "replicas": 3,
            "image": {
                "repository": "registry.example.com/kubeguard",
                "tag": "0.1.0",
                "pullPolicy": "Always",
            },
        },
        {
            "feature_gates": "PodEvictionProtection=true,SidecarInjection=true",
            "notready_threshold": "10%",
            "notready_window": "2m",
            "break_glass_groups": "sre,oncall",
            "sidecar_label": "example.com/sidecar",
            "redrive": False,
            "redrive_rate": "5",
        },
        {
            "failure_policies": {"pods.pod-eviction-protection.kubeguard.io": "Fail"},
            "excluded_namespaces": ("kube-system", "monitoring"),
            "replicas": 3,
            "image": "registry.example.com/kubeguard:0.1.0",
            "image_pull_policy": "Always",
        },
    ),
    (
        {
            "monitoring": {
                k: {"enabled": True} for k in ("serviceMonitor", "prometheusRule", "dashboard")
            }
        },
        {},
        {"monitoring": True},
    ),
]


@pytest.mark.parametrize("namespace", ["kubeguard-system", "guard"])
@pytest.mark.parametrize(("values", "settings", "options"), VARIANTS)
def test_chart_matches_kubeguard_manifests(
    values: dict[str, Any], settings: dict[str, Any], options: dict[str, Any], namespace: str
) -> None:
    chart().validate_schema(values)
    objects = helm(values, namespace)
    validate(objects)
    opts = m.options_from_settings({**settings, "namespace": namespace}, **options)
    assert_same(objects, m.render(opts).objects)


def test_chart_refuses_settings_it_cannot_render() -> None:
    data = json.loads((CHART / "files" / "webhooks.json").read_text())
    for row in data["fixed"]:
        with pytest.raises(HelmError, match=row["env"]):
            helm(
                {
                    "featureGates": {p.gate: True for p in default_registry().plugins},
                    "config": {row["env"]: "kgsubother"},
                }
            )
    with pytest.raises(HelmError, match=r"unknown feature gate|featureGates"):
        helm({"featureGates": {"Bogus": True}})


def test_values_and_schema_cover_every_setting() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(values, schema)
    table = {row["env"] for row in m.helm_settings_table()}
    assert set(values["config"]) == table == set(schema["properties"]["config"]["properties"])
    assert set(values) == set(schema["properties"])
    bad = copy.deepcopy(values)
    bad["config"]["NODE_NOTREADY_TRESHOLD"] = "3"  # a typo is rejected, not ignored
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(HelmError):
        chart().validate_schema({"certMode": "letsencrypt"})


def test_notes_tell_how_to_check_and_release() -> None:
    notes = chart().render(name="kubeguard", namespace="ops")["kubeguard/templates/NOTES.txt"]
    assert "kubectl -n ops port-forward svc/kubeguard 8443:443" in notes
    assert "kubeguard status" in notes and "/callback/disable-interception" in notes
