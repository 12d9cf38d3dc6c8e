"""The API's OpenAPI document: every /api route answers a typed object, says when an id is unknown, and the
PNG routes say they return PNG; the filters' choices come from the domain's enums."""

from __future__ import annotations

from typing import Any

from web_support import Site

from pneumoscan.domain import DICOM_COLUMNS, LABELS, REVIEW_STATES, SORTS, STATUSES


def _resolve(node: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = document["components"]["schemas"][name]
    return node


def _untyped(node: Any, document: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    """The places under ``node`` whose schema says nothing: {} or an object without properties."""
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        if node["$ref"] in seen:
            return []
        seen.add(node["$ref"])
        return _untyped(_resolve(node, document), document, f"{where} -> {node['$ref']}", seen)
    if not ({"type", "anyOf", "oneOf", "allOf", "enum", "const"} & set(node)):
        return [where]
    problems = []
    if node.get("type") == "object":
        if not node.get("properties"):
            return [f"{where} (an object of any keys)"]
        for name, sub in node["properties"].items():
            problems += _untyped(sub, document, f"{where}.{name}", seen)
    if node.get("type") == "array":
        problems += _untyped(node.get("items"), document, f"{where}[]", seen)
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(node.get(key, [])):
            problems += _untyped(sub, document, f"{where}|{i}", seen)
    return problems


def _api_operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{method.upper()} {path}": operation for path, operations in document["paths"].items()
            if path.startswith("/api/") for method, operation in operations.items()}


def test_every_api_route_has_a_typed_response_404s_for_ids_and_png_for_pictures(site: Site, reviewer: Any) -> None:
    document = reviewer.get("/openapi.json").json()
    operations = _api_operations(document)
    assert {"GET /api/results", "GET /api/images/{image_id}", "GET /api/images/{image_id}/image.png",
            "GET /api/images/{image_id}/heatmap.png", "GET /api/images/{image_id}/reviews",
            "POST /api/images/{image_id}/reviews", "GET /api/studies"} <= set(operations)
    for name, operation in operations.items():
        responses = operation["responses"]
        success = next(code for code in responses if code.startswith("2"))
        content = responses[success].get("content", {})
        if name.endswith(".png"):
            assert list(content) == ["image/png"], name
            assert content["image/png"]["schema"] == {"type": "string", "format": "binary"}, name
        else:
            assert list(content) == ["application/json"], name
            body = content["application/json"]["schema"]
            assert "$ref" in body or "$ref" in body.get("items", {}), f"{name}: {body} is no typed object"
            assert _untyped(body, document, name, set()) == [], name
        if "{image_id}" in name:
            assert "404" in responses, f"{name} does not document an unknown id"
            assert _untyped(responses["404"]["content"]["application/json"]["schema"], document, name, set()) == []
        assert "401" in responses, f"{name} does not document that it needs a login"


def test_the_typed_models_follow_the_vocabulary_and_the_results_fields(site: Site, reviewer: Any) -> None:
    from pneumoscan.db.results import RESULT_FIELDS
    from pneumoscan.web.schemas import DicomOut, ResultOut

    assert tuple(ResultOut.model_fields) == RESULT_FIELDS
    assert tuple(DicomOut.model_fields) == DICOM_COLUMNS
    document = reviewer.get("/openapi.json").json()
    parameters = {p["name"]: p["schema"] for p in document["paths"]["/api/results"]["get"]["parameters"]}

    def choices(schema: dict[str, Any]) -> set[str]:
        found: set[str] = set()
        for option in schema.get("anyOf", [schema]):
            option = _resolve(option, document)
            found |= set(option.get("enum", [])) | ({option["const"]} if "const" in option else set())
        return found

    assert choices(parameters["status"]) == set(STATUSES)
    assert choices(parameters["label"]) == set(LABELS)
    assert choices(parameters["sort"]) == set(SORTS)
    assert choices(parameters["review"]) == {*REVIEW_STATES, "all"}
    result = _resolve(document["components"]["schemas"]["ResultOut"], document)
    assert choices(result["properties"]["status"]) == set(STATUSES)
    assert choices(result["properties"]["label"]) == set(LABELS)


def test_typed_answers_keep_their_shape(site: Site, reviewer: Any) -> None:
    """What the models serialise is what the untyped API answered: the same keys, timestamps in ISO 8601."""
    from datetime import datetime

    page = reviewer.get("/api/results?limit=500").json()
    assert set(page) == {"total", "total_is_lower_bound", "offset", "limit", "fields", "results"}
    assert all(list(row) == page["fields"] for row in page["results"])
    row = next(r for r in page["results"] if r["classified_at"])
    assert datetime.fromisoformat(row["classified_at"]) and datetime.fromisoformat(row["updated_at"])
    detail = reviewer.get(f"/api/images/{row['id']}").json()
    assert set(detail) == {"id", "sha256", "kind", "byte_size", "status", "reason", "path", "first_seen_at",
                           "updated_at", "dicom", "domain", "domain_score", "predictions", "paths", "reviews"}
    assert set(detail["dicom"]) == set(DICOM_COLUMNS)
    assert reviewer.get("/api/images/999999/reviews").json() == {"detail": "no image with id 999999"}
