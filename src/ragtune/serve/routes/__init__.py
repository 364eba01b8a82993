"""One APIRouter per resource; routes validate, call the library, shape the response."""
