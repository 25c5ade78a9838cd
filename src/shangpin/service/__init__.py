"""The REST service (`shangpin serve`): a thin FastAPI edge over the library; see `create_app`."""

from shangpin.service.app import AUTH_ENV, ServiceSettings, auth_enabled, create_app

__all__ = ["AUTH_ENV", "ServiceSettings", "auth_enabled", "create_app"]
