"""Notes → reviews → passages: reading the weekly Markdown files (reader), the
kind of each labelled paragraph (sections), cutting reviews into passages
(chunking), and recognising which reviewed paper a name refers to (titles).
Depends on nothing of the package but `errors`."""
