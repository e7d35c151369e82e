"""Fixed texts kb shows or sends: data, not code. Tests assert on these constants."""

CANNOT_ANSWER = "I found nothing in the knowledge base that answers this question."
NEAREST_SOURCES = "The nearest sources I found (none of them answers it):"
NO_PERSONA_TITLE = "kb"
