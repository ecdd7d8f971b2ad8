"""The raw inputs' data contract (DESIGN.md, "Canonical raw inputs"): the columns
readers look for and which of them a row cannot do without."""

from __future__ import annotations

from fusionrank.core.config import EVENT_TYPES

CATALOG_FIELDS = ["item_id", "title", "description", "category", "brand", "price", "image_uri", "updated_at"]
CATALOG_REQUIRED = ["item_id", "title"]

EVENT_FIELDS = ["user_id", "event_type", "event_ts", "item_id", "value", "query", "session_id"]
EVENT_REQUIRED = ["user_id", "event_type", "event_ts"]

KNOWN_EVENT_TYPES = EVENT_TYPES
