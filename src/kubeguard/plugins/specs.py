"""Registration shapes shared by the plugins' `build` functions."""

from __future__ import annotations

from kubeguard.admission.handler import Handler
from kubeguard.admission.webhook import HandlerSpec, Rule, WebhookEntry


def labelled_pod_create_spec(
    *,
    name: str,
    path: str,
    handler: Handler,
    label_key: str,
    reinvocation_policy: str,
) -> list[HandlerSpec]:
    """A fail-closed mutating handler for pod CREATEs labelled `<label_key>: "true"`.

    Its one webhook entry is named `<name>.kubeguard.io`. `sideEffects: NoneOnDryRun` because
    the handler's only side effect, a notification, is skipped on dry runs (`send_notice`).
    """
    entry = WebhookEntry(
        name=f"{name}.kubeguard.io",
        rules=(Rule(operations=("CREATE",), resources=("pods",)),),
        failure_policy="Fail",
        object_selector={"matchLabels": {label_key: "true"}},
        timeout_seconds=5,
        side_effects="NoneOnDryRun",
        reinvocation_policy=reinvocation_policy,
    )
    return [
        HandlerSpec(
            name=name,
            path=path,
            kind="mutating",
            handler=handler,
            failure_policy="Fail",
            entries=(entry,),
        )
    ]
