"""The web view's app, mounted at ``/ui``: the caseload and client pages (`serving.webview`)
and the SMART on FHIR launch from an EHR (`serving.smart`)."""

from __future__ import annotations

from starlette.applications import Starlette

from serving import smart, webview

webapp = Starlette(routes=[*webview.routes, *smart.routes])
