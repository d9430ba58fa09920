"""openapi.yaml and the routes the app registers agree both ways, and it is served as JSON."""
import re

import schemathesis

from routes import openapi

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def shape(path):
    """A path with its parameters blanked, so `<job_id>` and `{jobId}` compare equal."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def app_routes(app):
    """Every route of the API; the dashboard's pages and static files are HTML for browsers, not part of it."""
    return {(method, shape(rule.rule)): app.view_functions[rule.endpoint]
            for rule in app.url_map.iter_rules()
            if rule.endpoint != "static" and not rule.endpoint.startswith("dashboard.")
            for method in rule.methods & METHODS}


def documented_operations():
    return {(method.upper(), shape(path)): operation
            for path, item in openapi.document()["paths"].items()
            for method, operation in item.items() if method.upper() in METHODS}


def test_every_registered_route_is_documented(app):
    assert set(app_routes(app)) - set(documented_operations()) == set()


def test_every_documented_route_is_registered(app):
    assert set(documented_operations()) - set(app_routes(app)) == set()


def test_documented_security_matches_each_views_permission(app):
    operations = documented_operations()
    for route, view in app_routes(app).items():
        permission = getattr(view, "required_permission", None)
        operation = operations[route]
        if permission is None:
            assert not any("apiKey" in scheme for scheme in operation.get("security", [])), route
        else:
            assert operation["security"] == [{"apiKey": []}], route
            assert f"`{permission}`" in operation["description"], route


def test_every_api_route_documents_401_403_and_429(app):
    for (method, path), operation in documented_operations().items():
        if {"apiKey": []} in operation.get("security", []):
            # Rate limits are on /api/ only: /metrics is scraped at Prometheus's own pace.
            expected = {"401", "403", "429"} if path.startswith("/api/") else {"401", "403"}
            assert expected <= set(operation["responses"]), (method, path)


def test_every_error_response_is_the_json_error_body():
    document = openapi.document()
    responses = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


def test_rate_limited_answer_documents_retry_after():
    response = openapi.document()["components"]["responses"]["RateLimited"]
    assert response["headers"]["Retry-After"]["$ref"] == "#/components/headers/Retry-After"


def test_document_is_served_as_json(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.is_json
    body = response.get_json()
    assert body == openapi.document()
    assert body["openapi"].startswith("3.1")


def test_document_is_valid_openapi_3_1():
    schemathesis.openapi.from_dict(openapi.document()).validate()  # the 3.1 meta-schema, or raises
