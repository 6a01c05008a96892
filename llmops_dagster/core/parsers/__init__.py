"""One parser per format; ``core.documents.parse_file`` picks one by the file's extension."""
