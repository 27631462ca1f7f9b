"""Reports: the paper-style tables and plots built from the pipeline's metrics files."""
