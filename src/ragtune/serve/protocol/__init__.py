"""Pydantic models of the API's requests and responses, named and shaped as the official
``openai`` SDK's types (``openai/types/...``); one module per resource."""
