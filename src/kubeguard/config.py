"""Settings: seed 000's environment variables, overridable by CLI flags.

Every setting is declared once in `OPTIONS` (field, flag, environment variable, parser, default,
help). `kubeguard serve` turns the table into click options; `load_settings` resolves each value
as flag > environment > default and parses it. A bad value fails start-up with a message that
names the flag and the variable and shows the accepted form.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_NAMESPACE = "kubeguard-system"
DEFAULT_WORKER_SELECTOR = "!node-role.kubernetes.io/control-plane,!node-role.kubernetes.io/master"


class ConfigError(ValueError):
    """A setting has an invalid value. The message names it and the accepted form."""


# --- parsers -----------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from `300`, `300s`, `5m`, `1m30s`, `1.5h` or `500ms`."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        if not _DURATION_RE.match(text):
            raise ValueError("expected a duration like 5m, 300s, 1m30s, 500ms or 300") from None
        value = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a non-negative duration like 5m, 300s or 300")
    return value


def parse_optional_duration(text: str) -> float | None:
    if text.strip().lower() in ("", "0", "off", "none", "never"):
        return None
    value = parse_duration(text)
    return value or None


def parse_positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("expected a positive duration like 5m, 300s or 300")
    return value


@dataclass(frozen=True)
class Threshold:
    """A node count (`3`) or a percentage of counted worker nodes (`10%`)."""

    count: int | None = None
    percent: float | None = None

    def resolve(self, total: int) -> int:
        """The number of NotReady nodes that engages protection among `total` counted nodes."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return max(1, math.ceil(total * self.percent / 100.0 - 1e-9))

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        return f"{self.percent:g}%"


def parse_threshold(text: str) -> Threshold:
    text = text.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            pct = -1.0
        if not (0 < pct <= 100):
            raise ValueError("expected a percentage between 0% and 100% such as 10%")
        return Threshold(percent=pct)
    if not text.isdigit() or int(text) < 1:
        raise ValueError("expected a whole number of nodes >= 1 (e.g. 3) or a percentage (10%)")
    return Threshold(count=int(text))


def parse_port(text: str) -> int:
    if not text.strip().isdigit() or not (0 < int(text) < 65536):
        raise ValueError("expected a TCP port number from 1 to 65535")
    return int(text)


def parse_positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError("expected a whole number >= 1")
    return int(text)


def parse_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a positive number such as 10 or 0.5")
    return value


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_http_code(text: str) -> int:
    if not text.strip().isdigit() or not (400 <= int(text) <= 599):
        raise ValueError("expected an HTTP error status code from 400 to 599 (e.g. 403 or 429)")
    return int(text)


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in allowed:
            raise ValueError("expected one of " + ", ".join(allowed))
        return low

    return parse


def parse_str(text: str) -> str:
    return text


def parse_path(text: str) -> Path:
    return Path(text).expanduser()


def parse_optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text.strip() else None


# --- the settings --------------------------------------------------------------------------------


def _default_namespace() -> str:
    try:
        return Path(SA_NAMESPACE_FILE).read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


@dataclass(frozen=True)
class Settings:
    # server
    port: int = 8443
    bind_address: str = "0.0.0.0"
    cert_dir: Path = Path(DEFAULT_CERT_DIR)
    local: bool = False
    cert_reload_interval: float = 5.0
    log_format: str = "json"
    log_level: str = "info"
    feature_gates: str = ""
    # kubernetes access
    kubeconfig: Path | None = None
    namespace: str = field(default_factory=_default_namespace)
    service_account: str = "kubeguard"
    # certificates
    self_signed: bool = False
    service_name: str = "kubeguard"
    cert_secret: str = "kubeguard-serving-cert"
    # protection (seed 000)
    notready_threshold: Threshold = Threshold(count=3)
    notready_window: float = 300.0
    worker_selector: str = DEFAULT_WORKER_SELECTOR
    count_cordoned: bool = False
    count_excluded: bool = False
    protect_ready_condition: bool = True
    mode: str = "enforce"
    eviction_deny_code: int = 429
    delete_deny_code: int = 403
    break_glass_users: tuple[str, ...] = ()
    break_glass_groups: tuple[str, ...] = ()
    state_name: str = "kubeguard-state"
    webhook_config_name: str = "pod-eviction-protection"
    redrive: bool = True
    redrive_rate: float = 10.0
    redrive_force_delete_after: float | None = None
    auto_release_after: float | None = None
    callback_auth: str = "kubernetes"
    callback_auth_group: str = "kubeguard.io"
    callback_auth_resource: str = "interception"
    callback_auth_verb: str = "update"
    # plugins (seed 004, seed 002)
    sts_label_key: str = "ab-build-different"
    sts_annotation: str = "custom-node-selector"
    sts_invalid_action: str = "deny"
    ordinal_env_name: str = "INDEX"
    ordinal_env_label: str = "kubeguard.io/ordinal-env"
    ordinal_env_init_containers: bool = True
    delete_protection_resources: tuple[str, ...] = (
        "namespaces",
        "deployments",
        "statefulsets",
        "daemonsets",
        "services",
        "persistentvolumeclaims",
        "configmaps",
        "secrets",
    )
    sidecar_configmap: str = "kubeguard-sidecar"
    sidecar_label: str = "kubeguard.io/inject-sidecar"
    # notifications
    dingtalk_url: str = ""
    dingtalk_secret: str = ""
    dingtalk_msgtype: str = "markdown"
    notify_webhook_url: str = ""
    notify_events: tuple[str, ...] = (
        "protection-engaged",
        "protection-released",
        "redrive-done",
        "plugin-denial",
        "plugin-warning",
    )

    def summary(self) -> dict[str, Any]:
        """Settings for the start-up log line, secrets masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value:
                value = "***"
            elif f.name in _URL_FIELDS and value:
                value = _mask_url(value)
            out[f.name] = str(value) if isinstance(value, Path | Threshold) else value
        return out


_SECRET_FIELDS = {"dingtalk_secret"}
_URL_FIELDS = {"dingtalk_url", "notify_webhook_url"}


def _mask_url(url: str) -> str:
    """Scheme and host only: tokens hide in query strings, paths and user-info."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/***"


@dataclass(frozen=True)
class Option:
    """One setting: its Settings field, CLI flag, environment variable and parser."""

    field: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str
    accepted: str = ""
    is_flag: bool = False  # a boolean with --x/--no-x


OPTIONS: tuple[Option, ...] = (
    Option("port", "--port", "WEBHOOK_PORT", parse_port, "HTTPS port of the webhook server."),
    Option(
        "bind_address",
        "--bind-address",
        "WEBHOOK_BIND_ADDRESS",
        parse_str,
        "Listen address (0.0.0.0 in clusters; 127.0.0.1 for local runs).",
    ),
    Option(
        "cert_dir",
        "--cert-dir",
        "CERT_DIR",
        parse_path,
        "Directory holding tls.crt and tls.key (hot-reloaded).",
    ),
    Option(
        "local",
        "--local",
        "KUBEGUARD_LOCAL",
        parse_bool,
        "Local development: plain HTTP, Kubernetes access through the local kubeconfig.",
        is_flag=True,
    ),
    Option(
        "cert_reload_interval",
        "--cert-reload-interval",
        "CERT_RELOAD_INTERVAL",
        parse_positive_duration,
        "How often the certificate files are checked for changes.",
    ),
    Option("log_format", "--log-format", "LOG_FORMAT", choice("json", "text"), "Log format."),
    Option(
        "log_level",
        "--log-level",
        "LOG_LEVEL",
        choice("debug", "info", "warning", "error"),
        "Log level. info logs one `admission decision` line per denial, patch, error or allow "
        "with a warning; debug also logs every plain allow.",
    ),
    Option(
        "feature_gates",
        "--feature-gates",
        "FEATURE_GATES",
        parse_str,
        "Enable or disable webhooks, e.g. PodEvictionProtection=true,StsNodeSelector=false.",
    ),
    Option(
        "kubeconfig",
        "--kubeconfig",
        "KUBECONFIG",
        parse_optional_path,
        "kubeconfig file (default: in-cluster config, then ~/.kube/config).",
    ),
    Option(
        "namespace",
        "--namespace",
        "KUBEGUARD_NAMESPACE",
        parse_str,
        "Namespace of kubeguard's state object, Secret and events.",
    ),
    Option(
        "service_account",
        "--service-account",
        "KUBEGUARD_SERVICE_ACCOUNT",
        parse_str,
        "kubeguard's own service account name (its re-drive is always allowed).",
    ),
    Option(
        "self_signed",
        "--self-signed",
        "KUBEGUARD_SELF_SIGNED",
        parse_bool,
        "Generate the CA and serving certificate, store them in a Secret, patch the caBundle.",
        is_flag=True,
    ),
    Option(
        "service_name",
        "--service-name",
        "KUBEGUARD_SERVICE_NAME",
        parse_str,
        "Service name the serving certificate is issued for (self-signed mode).",
    ),
    Option(
        "cert_secret",
        "--cert-secret",
        "KUBEGUARD_CERT_SECRET",
        parse_str,
        "Secret holding the self-signed CA and serving certificate.",
    ),
    Option(
        "notready_threshold",
        "--notready-threshold",
        "NODE_NOTREADY_THRESHOLD",
        parse_threshold,
        "NotReady worker nodes within the window that engage protection: a count or a percent.",
    ),
    Option(
        "notready_window",
        "--notready-window",
        "NODE_NOTREADY_WINDOW",
        parse_positive_duration,
        "Detection window, e.g. 5m, 300s or 300.",
    ),
    Option(
        "worker_selector",
        "--worker-selector",
        "WORKER_SELECTOR",
        parse_str,
        "Label selector of the worker nodes that are monitored.",
    ),
    Option(
        "count_cordoned",
        "--count-cordoned",
        "COUNT_CORDONED_NODES",
        parse_bool,
        "Count cordoned (spec.unschedulable) nodes toward engagement.",
        is_flag=True,
    ),
    Option(
        "count_excluded",
        "--count-excluded",
        "COUNT_EXCLUDED_NODES",
        parse_bool,
        "Count nodes labelled node.kubernetes.io/exclude-disruption toward engagement.",
        is_flag=True,
    ),
    Option(
        "protect_ready_condition",
        "--protect-ready-condition",
        "PROTECT_READY_CONDITION",
        parse_bool,
        "Also deny pods/status updates that turn Ready to False while engaged.",
        is_flag=True,
    ),
    Option(
        "mode",
        "--mode",
        "KUBEGUARD_MODE",
        choice("enforce", "warn"),
        "enforce denies; warn allows with an admission warning (observe only).",
    ),
    Option(
        "eviction_deny_code",
        "--eviction-deny-code",
        "EVICTION_DENY_CODE",
        parse_http_code,
        "HTTP code of a denied eviction (429 makes kubectl drain retry).",
    ),
    Option(
        "delete_deny_code",
        "--delete-deny-code",
        "DELETE_DENY_CODE",
        parse_http_code,
        "HTTP code of a denied delete or status update.",
    ),
    Option(
        "break_glass_users",
        "--break-glass-users",
        "BREAK_GLASS_USERS",
        parse_list,
        "Comma-separated users that are always allowed (audited).",
    ),
    Option(
        "break_glass_groups",
        "--break-glass-groups",
        "BREAK_GLASS_GROUPS",
        parse_list,
        "Comma-separated groups that are always allowed (audited).",
    ),
    Option(
        "state_name",
        "--state-name",
        "KUBEGUARD_STATE_NAME",
        parse_str,
        "Name of the ConfigMap holding the shared protection state.",
    ),
    Option(
        "webhook_config_name",
        "--webhook-config-name",
        "KUBEGUARD_WEBHOOK_CONFIG_NAME",
        parse_str,
        "Name of the ValidatingWebhookConfiguration (caBundle patched in self-signed mode).",
    ),
    Option(
        "redrive",
        "--redrive",
        "REDRIVE",
        parse_bool,
        "On release, evict the pods stranded on nodes that are still NotReady.",
        is_flag=True,
    ),
    Option(
        "redrive_rate",
        "--redrive-rate",
        "REDRIVE_RATE",
        parse_positive_float,
        "Re-drive evictions per second, overall.",
    ),
    Option(
        "redrive_force_delete_after",
        "--redrive-force-delete-after",
        "REDRIVE_FORCE_DELETE_AFTER",
        parse_optional_duration,
        "Delete a pod whose eviction a PodDisruptionBudget blocked this long (default: never).",
    ),
    Option(
        "auto_release_after",
        "--auto-release-after",
        "AUTO_RELEASE_AFTER",
        parse_optional_duration,
        "Release protection once every node has been Ready this long (default: never).",
    ),
    Option(
        "callback_auth",
        "--callback-auth",
        "CALLBACK_AUTH",
        choice("kubernetes", "none"),
        "Callback API auth: TokenReview + SubjectAccessReview, or none (127.0.0.1/--local only).",
    ),
    Option(
        "callback_auth_group",
        "--callback-auth-group",
        "CALLBACK_AUTH_GROUP",
        parse_str,
        "API group checked by the SubjectAccessReview for callback toggles.",
    ),
    Option(
        "callback_auth_resource",
        "--callback-auth-resource",
        "CALLBACK_AUTH_RESOURCE",
        parse_str,
        "Resource checked by the SubjectAccessReview for callback toggles.",
    ),
    Option(
        "callback_auth_verb",
        "--callback-auth-verb",
        "CALLBACK_AUTH_VERB",
        parse_str,
        "Verb checked by the SubjectAccessReview for callback toggles.",
    ),
    Option(
        "sts_label_key",
        "--sts-label-key",
        "STS_LABEL_KEY",
        parse_str,
        "Pod label that opts a StatefulSet pod in to the ordinal nodeSelector.",
    ),
    Option(
        "sts_annotation",
        "--sts-annotation",
        "STS_ANNOTATION",
        parse_str,
        "Pod annotation holding the nodeSelector JSON.",
    ),
    Option(
        "sts_invalid_action",
        "--sts-invalid-action",
        "STS_INVALID_ACTION",
        choice("deny", "warn"),
        "What to do with an opted-in pod whose annotation is missing or malformed.",
    ),
    Option(
        "ordinal_env_name",
        "--ordinal-env-name",
        "ORDINAL_ENV_NAME",
        parse_str,
        "Name of the environment variable holding the StatefulSet ordinal.",
    ),
    Option(
        "ordinal_env_label",
        "--ordinal-env-label",
        "ORDINAL_ENV_LABEL",
        parse_str,
        "Pod label (value true) that opts in to the ordinal environment variable.",
    ),
    Option(
        "ordinal_env_init_containers",
        "--ordinal-env-init-containers",
        "ORDINAL_ENV_INIT_CONTAINERS",
        parse_bool,
        "Also inject the ordinal variable into init containers.",
        is_flag=True,
    ),
    Option(
        "delete_protection_resources",
        "--delete-protection-resources",
        "DELETE_PROTECTION_RESOURCES",
        parse_list,
        "Comma-separated resources guarded by the kubeguard.io/delete-protection label.",
    ),
    Option(
        "sidecar_configmap",
        "--sidecar-configmap",
        "SIDECAR_CONFIGMAP",
        parse_str,
        "ConfigMap (in kubeguard's namespace) whose sidecar.yaml defines the injected sidecar.",
    ),
    Option(
        "sidecar_label",
        "--sidecar-label",
        "SIDECAR_LABEL",
        parse_str,
        "Namespace or pod label (value true) that opts in to sidecar injection.",
    ),
    Option(
        "dingtalk_url",
        "--dingtalk-url",
        "DINGTALK_WEBHOOK_URL",
        parse_str,
        "DingTalk robot webhook URL (never logged).",
    ),
    Option(
        "dingtalk_secret",
        "--dingtalk-secret",
        "DINGTALK_SECRET",
        parse_str,
        "DingTalk robot signing secret (never logged).",
    ),
    Option(
        "dingtalk_msgtype",
        "--dingtalk-msgtype",
        "DINGTALK_MESSAGE_TYPE",
        choice("markdown", "text"),
        "DingTalk message type.",
    ),
    Option(
        "notify_webhook_url",
        "--notify-webhook-url",
        "NOTIFY_WEBHOOK_URL",
        parse_str,
        "Generic JSON webhook that receives notifications.",
    ),
    Option(
        "notify_events",
        "--notify-events",
        "NOTIFY_EVENTS",
        parse_list,
        "Comma-separated events that are notified.",
    ),
)

OPTIONS_BY_FIELD = {o.field: o for o in OPTIONS}


def load_settings(
    cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every option as CLI value > environment variable > default.

    `cli` maps field names to raw strings (or bools for flags); None means "not given".
    """
    cli = cli or {}
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = cli.get(opt.field)
        source = opt.flag
        if raw is None:
            raw = env.get(opt.env)
            source = opt.env
            if raw is not None and raw.strip() == "" and opt.field != "feature_gates":
                continue  # an empty variable means "unset", as in most tools
        if raw is None:
            continue
        if isinstance(raw, bool):
            values[opt.field] = raw
            continue
        try:
            values[opt.field] = opt.parse(str(raw))
        except ValueError as exc:
            other = opt.env if source == opt.flag else opt.flag
            raise ConfigError(
                f"invalid value {raw!r} for {source} (also settable as {other}): {exc}"
            ) from None
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Cross-field checks."""
    if settings.callback_auth == "none" and not (
        settings.local or settings.bind_address in ("127.0.0.1", "::1", "localhost")
    ):
        raise ConfigError(
            "--callback-auth=none (CALLBACK_AUTH) is refused unless the server is bound to "
            "127.0.0.1 (--bind-address) or runs with --local: anyone reaching the port could "
            "release the protection"
        )
    if settings.local and settings.self_signed:
        raise ConfigError("--local serves plain HTTP; it cannot be combined with --self-signed")


# Chinese help texts for README.zh-CN.md (a test checks every option has one).
HELP_ZH: dict[str, str] = {
    "port": "Webhook 服务的 HTTPS 端口。",
    "bind_address": "监听地址（集群内用 0.0.0.0；本地运行用 127.0.0.1）。",
    "cert_dir": "存放 tls.crt 和 tls.key 的目录（热加载）。",
    "local": "本地开发：明文 HTTP，通过本地 kubeconfig 访问 Kubernetes。",
    "cert_reload_interval": "检查证书文件变化的间隔。",
    "log_format": "日志格式。",
    "log_level": "日志级别。info 为每个拒绝、patch、错误以及带警告的放行记录一行 "
    "`admission decision`；debug 还会记录每个普通放行。",
    "feature_gates": "开启或关闭 Webhook，例如 PodEvictionProtection=true,StsNodeSelector=false。",
    "kubeconfig": "kubeconfig 文件（默认：集群内配置，其次 ~/.kube/config）。",
    "namespace": "kubeguard 状态对象、Secret 和事件所在的 namespace。",
    "service_account": "kubeguard 自己的 service account 名称（其 re-drive 总是放行）。",
    "self_signed": "生成 CA 和服务证书，保存到 Secret，并修补 caBundle。",
    "service_name": "服务证书签发给的 Service 名称（自签名模式）。",
    "cert_secret": "保存自签名 CA 和服务证书的 Secret。",
    "notready_threshold": "窗口内进入 NotReady 即启动保护的工作节点数：数量或百分比。",
    "notready_window": "检测窗口，例如 5m、300s 或 300。",
    "worker_selector": "被监控的工作节点的标签选择器。",
    "count_cordoned": "把已 cordon（spec.unschedulable）的节点计入启动条件。",
    "count_excluded": "把带 node.kubernetes.io/exclude-disruption 标签的节点计入启动条件。",
    "protect_ready_condition": "保护期间同时拒绝把 Ready 改为 False 的 pods/status 更新。",
    "mode": "enforce 拒绝；warn 以准入警告放行（仅观察）。",
    "eviction_deny_code": "拒绝驱逐时的 HTTP 状态码（429 让 kubectl drain 重试）。",
    "delete_deny_code": "拒绝删除或状态更新时的 HTTP 状态码。",
    "break_glass_users": "总是放行的用户，逗号分隔（记审计日志）。",
    "break_glass_groups": "总是放行的用户组，逗号分隔（记审计日志）。",
    "state_name": "保存共享保护状态的 ConfigMap 名称。",
    "webhook_config_name": "ValidatingWebhookConfiguration 的名称（自签名模式下修补其 caBundle）。",
    "redrive": "解除保护时，驱逐滞留在仍 NotReady 节点上的 Pod。",
    "redrive_rate": "re-drive 每秒驱逐数（全局）。",
    "redrive_force_delete_after": (
        "驱逐被 PodDisruptionBudget 阻止超过该时长后直接删除 Pod（默认：从不）。"
    ),
    "auto_release_after": "所有节点 Ready 持续该时长后自动解除保护（默认：从不）。",
    "callback_auth": (
        "Callback API 认证：TokenReview + SubjectAccessReview，或 none（仅 127.0.0.1/--local）。"
    ),
    "callback_auth_group": "SubjectAccessReview 检查回调开关时使用的 API 组。",
    "callback_auth_resource": "SubjectAccessReview 检查回调开关时使用的资源。",
    "callback_auth_verb": "SubjectAccessReview 检查回调开关时使用的动作。",
    "sts_label_key": "让 StatefulSet Pod 选择加入序号 nodeSelector 的 Pod 标签。",
    "sts_annotation": "保存 nodeSelector JSON 的 Pod 注解。",
    "sts_invalid_action": "选择加入的 Pod 注解缺失或格式错误时的处理方式。",
    "ordinal_env_name": "保存 StatefulSet 序号的环境变量名。",
    "ordinal_env_label": "选择加入序号环境变量的 Pod 标签（值为 true）。",
    "ordinal_env_init_containers": "同时向 init 容器注入序号环境变量。",
    "delete_protection_resources": "受 kubeguard.io/delete-protection 标签保护的资源，逗号分隔。",
    "sidecar_configmap": (
        "定义注入 sidecar 的 ConfigMap（在 kubeguard 的 namespace 中，键 sidecar.yaml）。"
    ),
    "sidecar_label": "选择加入 sidecar 注入的 namespace 或 Pod 标签（值为 true）。",
    "dingtalk_url": "钉钉机器人 Webhook URL（不会写入日志）。",
    "dingtalk_secret": "钉钉机器人签名密钥（不会写入日志）。",
    "dingtalk_msgtype": "钉钉消息类型。",
    "notify_webhook_url": "接收通知的通用 JSON Webhook。",
    "notify_events": "需要通知的事件，逗号分隔。",
}


def reference_table(lang: str = "en") -> str:
    """The configuration reference as a Markdown table (README.md embeds the English one,
    README.zh-CN.md the Chinese one; a test keeps them in sync with `OPTIONS`)."""
    zh = lang == "zh"
    default_ns = (
        "（service account 所在 namespace，否则 kubeguard-system）"
        if zh
        else ("(service-account namespace, else kubeguard-system)")
    )
    defaults = Settings(namespace=default_ns)
    header = (
        "| 参数 | 环境变量 | 默认值 | 说明 |"
        if zh
        else "| Flag | Environment | Default | Meaning |"
    )
    rows = [header, "|---|---|---|---|"]
    for opt in OPTIONS:
        value = getattr(defaults, opt.field)
        if isinstance(value, tuple):
            value = ",".join(value)
        if isinstance(value, bool):
            value = str(value).lower()
        shown = "—" if value is None or value == "" else f"`{value}`"
        flag = f"`{opt.flag}`/`--no-{opt.flag[2:]}`" if opt.is_flag else f"`{opt.flag}`"
        meaning = HELP_ZH[opt.field] if zh else opt.help
        rows.append(f"| {flag} | `{opt.env}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"
