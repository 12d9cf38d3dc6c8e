"""The app's routes, one router module per resource; each takes what it needs from web.deps, none imports another."""

from __future__ import annotations

from fastapi import APIRouter

from pneumoscan.web.routes import admin, audit, auth, dashboard, dicomweb, images, results, reviews, studies, system

ROUTERS: tuple[APIRouter, ...] = (results.router, images.router, reviews.router, studies.router, system.router,
                                  auth.router, dashboard.router, admin.router, audit.router, dicomweb.router)
