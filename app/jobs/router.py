"""/v1/jobs: a job's progress, its verification report and the report's plots."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse

from app.db import SessionDep
from app.jobs import service
from app.jobs.schemas import JobOut
from app.security.auth import Principal, authenticate

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Caller = Annotated[Principal, Depends(authenticate)]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, principal: Caller) -> JobOut:
    """Stage, progress (0-100), method, runs, timings and every method attempted with its verdict."""
    return service.describe(session, service.get_job(session, principal, job_id))


@router.get(
    "/{job_id}/report",
    response_class=JSONResponse,
    responses={200: {"content": {"application/json": {}}}, 404: {"description": "no report yet"}},
)
def get_report(job_id: str, session: SessionDep, principal: Caller) -> Any:
    """The verification report (JSON); 404 until the job has written it."""
    return JSONResponse(service.load_report(service.get_job(session, principal, job_id)))


@router.get(
    "/{job_id}/report/{plot}.png",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such plot"}},
)
def get_plot(job_id: str, plot: str, session: SessionDep, principal: Caller) -> FileResponse:
    """A plot the report lists (e.g. roc, loss_hist, canary_ranks)."""
    path = service.plot_path(service.get_job(session, principal, job_id), plot)
    return FileResponse(path, media_type="image/png")
