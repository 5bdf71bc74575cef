"""cardsvc."""
