"""Staff pages, apart from the JSON API: the station desk, and the pages per role."""
