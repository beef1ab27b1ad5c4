"""Storage over fsspec: the Location seam, GCS JSON API calls, bounded reads and deletion safety."""
