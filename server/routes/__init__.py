"""The HTTP API's routes, one module per concern, each an ``APIRouter`` the app includes in this order."""

from server.routes import auth, chat, console, governance, jobs, ledger, live, machines, service

ROUTERS = (service.router, auth.router, machines.router, live.router, console.router, chat.router, governance.router, jobs.router,
           ledger.router)
"""In the order their paths appear in the schema."""

__all__ = ["ROUTERS"]
