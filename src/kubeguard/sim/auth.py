"""Authentication and authorization of the simulated cluster: a static user/permission table.

Bearer tokens map to users; users get rules (verbs × API groups × resources × namespaces) that
stand in for RBAC. Members of `system:masters` may do anything. The same table answers
`TokenReview` and `SubjectAccessReview`, and identifies the built-in controllers and kubelets.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from .util import JSON


@dataclass(frozen=True)
class UserInfo:
    """An authenticated identity, as it appears in `AdmissionReview.request.userInfo`."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str | None = None
    extra: dict[str, list[str]] = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> JSON:
        out: JSON = {"username": self.username}
        if self.uid:
            out["uid"] = self.uid
        if self.groups:
            out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out


@dataclass(frozen=True)
class Rule:
    """One permission: `*` is a wildcard in every field; `namespaces=("*",)` includes
    cluster-scoped requests. Resources may name subresources (`pods/eviction`)."""

    verbs: tuple[str, ...] = ("*",)
    api_groups: tuple[str, ...] = ("*",)
    resources: tuple[str, ...] = ("*",)
    namespaces: tuple[str, ...] = ("*",)

    def allows(self, verb: str, group: str, resource: str, namespace: str) -> bool:
        return (
            ("*" in self.verbs or verb in self.verbs)
            and ("*" in self.api_groups or group in self.api_groups)
            and (
                "*" in self.resources
                or resource in self.resources
                or (resource.split("/")[0] + "/*") in self.resources
            )
            and ("*" in self.namespaces or (bool(namespace) and namespace in self.namespaces))
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        def tup(key: str, alt: str) -> tuple[str, ...]:
            value = data.get(key, data.get(alt, ["*"]))
            if isinstance(value, str):
                value = [value]
            return tuple(str(v) for v in value)

        return cls(
            tup("verbs", "verb"),
            tup("apiGroups", "api_groups"),
            tup("resources", "resource"),
            tup("namespaces", "namespace"),
        )


@dataclass
class SimUser:
    """A row of the user table. `token` may be empty for identities that only the simulator's
    own controllers use (they still appear in reviews)."""

    username: str
    token: str = ""
    groups: tuple[str, ...] = ()
    uid: str | None = None
    extra: dict[str, list[str]] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    binding: str = ""

    def info(self) -> UserInfo:
        groups = self.groups
        if "system:authenticated" not in groups:
            groups = (*groups, "system:authenticated")
        return UserInfo(self.username, groups, self.uid, dict(self.extra))


def _x509_extra(name: str) -> dict[str, list[str]]:
    digest = hashlib.sha256(f"kubeguard-sim:{name}".encode()).hexdigest()
    return {"authentication.kubernetes.io/credential-id": [f"X509SHA256={digest}"]}


def service_account(
    namespace: str, name: str, *, token: str = "", rules: tuple[Rule, ...] = (Rule(),)
) -> SimUser:
    """A service-account user with a uid and a `JTI=` credential id, like a bound token."""
    seed = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()
    uid = f"{seed[:8]}-{seed[8:12]}-{seed[12:16]}-{seed[16:20]}-{seed[20:32]}"
    jti = hashlib.sha256(f"jti:{namespace}/{name}".encode()).hexdigest()
    jti_uuid = f"{jti[:8]}-{jti[8:12]}-{jti[12:16]}-{jti[16:20]}-{jti[20:32]}"
    return SimUser(
        username=f"system:serviceaccount:{namespace}:{name}",
        token=token,
        groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}"),
        uid=uid,
        extra={"authentication.kubernetes.io/credential-id": [f"JTI={jti_uuid}"]},
        rules=rules,
        binding=f"system:controller:{name}" if namespace == "kube-system" else "",
    )


def kubelet(node: str) -> UserInfo:
    """The identity of a node's kubelet (X.509 `CN=system:node:<n>`, `O=system:nodes`)."""
    return UserInfo(
        f"system:node:{node}",
        ("system:nodes", "system:authenticated"),
        None,
        _x509_extra(f"node:{node}"),
    )


NODE_CONTROLLER = service_account("kube-system", "node-controller")
POD_GC = service_account("kube-system", "pod-garbage-collector")
DISRUPTION_CONTROLLER = service_account("kube-system", "disruption-controller")
STATEFULSET_CONTROLLER = service_account("kube-system", "statefulset-controller")

_READ = ("get", "list", "watch")
_WRITE = ("create", "update", "patch", "delete")


def default_users() -> list[SimUser]:
    """admin (system:masters), alice (edit-like in every namespace), bob (no permissions) and
    the kubeguard service account (what the kubeguard Helm chart grants)."""
    return [
        SimUser(
            "admin", secrets.token_urlsafe(24), ("system:masters",), extra=_x509_extra("admin")
        ),
        SimUser(
            "alice",
            secrets.token_urlsafe(24),
            ("dev-team",),
            extra=_x509_extra("alice"),
            rules=(
                Rule(
                    _READ + _WRITE,
                    ("", "policy"),
                    (
                        "pods",
                        "pods/eviction",
                        "pods/status",
                        "configmaps",
                        "secrets",
                        "events",
                        "poddisruptionbudgets",
                    ),
                ),
                Rule(_READ, ("",), ("nodes", "namespaces")),
            ),
            binding="alice-edit",
        ),
        SimUser("bob", secrets.token_urlsafe(24), ("viewers",), extra=_x509_extra("bob")),
        service_account(
            "kubeguard",
            "kubeguard",
            token=secrets.token_urlsafe(24),
            rules=(
                Rule(_READ),
                Rule(
                    _WRITE,
                    ("", "coordination.k8s.io", "events.k8s.io"),
                    (
                        "pods",
                        "pods/eviction",
                        "pods/status",
                        "events",
                        "leases",
                        "configmaps",
                        "secrets",
                    ),
                ),
                Rule(
                    ("create",),
                    ("authentication.k8s.io", "authorization.k8s.io"),
                    ("tokenreviews", "subjectaccessreviews"),
                ),
                Rule(
                    _READ + _WRITE,
                    ("admissionregistration.k8s.io",),
                    ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"),
                ),
            ),
        ),
        NODE_CONTROLLER,
        POD_GC,
        DISRUPTION_CONTROLLER,
        STATEFULSET_CONTROLLER,
    ]


class UserTable:
    def __init__(self, users: list[SimUser]) -> None:
        self.users = list(users)
        self._by_token = {u.token: u for u in self.users if u.token}
        self._by_name = {u.username: u for u in self.users}

    def add(self, user: SimUser) -> None:
        self.users.append(user)
        if user.token:
            self._by_token[user.token] = user
        self._by_name[user.username] = user

    def authenticate(self, token: str) -> SimUser | None:
        return self._by_token.get(token) if token else None

    def by_name(self, username: str) -> SimUser | None:
        return self._by_name.get(username)

    def token_for(self, username: str) -> str:
        user = self._by_name.get(username)
        if user is None or not user.token:
            raise KeyError(f"no token for user {username!r}")
        return user.token

    def authorize(
        self,
        username: str,
        groups: tuple[str, ...] | list[str],
        verb: str,
        group: str,
        resource: str,
        namespace: str,
    ) -> tuple[bool, str]:
        """(allowed, reason) for a resource request; `resource` may be `pods/eviction`."""
        if "system:masters" in groups or username.startswith("system:node:"):
            return True, ""
        user = self._by_name.get(username)
        if user is None:
            return False, ""
        for rule in user.rules:
            if rule.allows(verb, group, resource, namespace):
                return True, _rbac_reason(user, namespace)
        return False, ""

    def token_review(self, spec: JSON, default_audiences: list[str]) -> JSON:
        user = self.authenticate(str(spec.get("token") or ""))
        if user is None:
            return {
                "user": {},
                "error": "[invalid bearer token, token lookup failed: unknown token]",
            }
        audiences = spec.get("audiences") or default_audiences
        return {"authenticated": True, "user": user.info().to_json(), "audiences": audiences}

    def access_review(self, spec: JSON) -> JSON:
        attrs = spec.get("resourceAttributes") or {}
        groups = tuple(spec.get("groups") or ())
        username = str(spec.get("user") or "")
        if not isinstance(attrs, dict) or not attrs:
            allowed = "system:masters" in groups
            return {"allowed": True} if allowed else {"allowed": False}
        resource = str(attrs.get("resource") or "")
        if attrs.get("subresource"):
            resource = f"{resource}/{attrs['subresource']}"
        allowed, reason = self.authorize(
            username,
            groups,
            str(attrs.get("verb") or ""),
            str(attrs.get("group") or ""),
            resource,
            str(attrs.get("namespace") or ""),
        )
        out: JSON = {"allowed": allowed}
        if allowed and reason:
            out["reason"] = reason
        return out


def _rbac_reason(user: SimUser, namespace: str) -> str:
    if user.username.startswith("system:serviceaccount:"):
        _, _, ns, name = user.username.split(":", 3)
        subject = f'ServiceAccount "{name}/{ns}"'
    else:
        subject = f'User "{user.username}"'
    role = user.binding or f"kubeguard-sim:{user.username}"
    if user.binding and namespace and not user.username.startswith("system:serviceaccount:"):
        return (
            f'RBAC: allowed by RoleBinding "{role}/{namespace}" of ClusterRole "edit" to {subject}'
        )
    return f'RBAC: allowed by ClusterRoleBinding "{role}" of ClusterRole "{role}" to {subject}'
