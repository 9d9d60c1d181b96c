"""The usage model: billable units of one call and the span attributes that carry them."""
