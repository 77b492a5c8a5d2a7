"""The AuthPolicy validating webhook: refuse at apply time what `nauthera compile` would refuse.

An AdmissionReview (v1) for AuthPolicy CREATE/UPDATE is answered with the compiler's validation of the
object: errors deny it with `spec.path: message` lines (the same messages as `nauthera compile`),
warnings come back as AdmissionResponse warnings (kubectl prints `Warning: ...`). So a policy that
passes the CRD schema but fails semantics (a `7d` duration, a URL in allowedHosts) is never stored.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nauthera.kube.policies import check_object
from nauthera.serve.server import parse_json

PATH = "/validate/authpolicies"
#: Kubernetes caps each warning; kubectl prints one line per warning.
_MAX_WARNING = 512


def review(request: dict[str, Any]) -> dict[str, Any]:
    """The `response` of an AdmissionReview `request`."""
    answer: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    obj = request.get("object")
    if request.get("operation") not in ("CREATE", "UPDATE") or not isinstance(obj, dict):
        return answer
    checked = check_object(obj)
    if checked.warnings:
        answer["warnings"] = [w[:_MAX_WARNING] for w in checked.warnings]
    if checked.errors:
        answer["allowed"] = False
        answer["status"] = {
            "code": 422,
            "reason": "Invalid",
            "message": f"AuthPolicy {checked.id} is invalid: {'; '.join(checked.errors)}",
        }
    return answer


async def validate(request: Request) -> Response:
    """POST /validate/authpolicies: an AdmissionReview in, its answer out; anything else is a 400."""
    try:
        body = parse_json(await request.body(), request.app.state.nauthera.config.max_json_depth)
    except ValueError as error:
        return JSONResponse({"error": f"expected an AdmissionReview: {error}"}, status_code=400)
    admission = body.get("request") if isinstance(body, dict) else None
    if not isinstance(admission, dict):
        return JSONResponse({"error": "expected an AdmissionReview with a request object"}, status_code=400)
    response = review(admission)
    return JSONResponse(
        {
            "apiVersion": body.get("apiVersion", "admission.k8s.io/v1"),
            "kind": "AdmissionReview",
            "response": response,
        }
    )
