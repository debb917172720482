"""The experiment report, computed only from files on disk: what the runs say (`data`), the study's findings
checked against them (`findings`, `study`, `heads`), figures (`plots`), machine lines (`machine`) and the
markdown + HTML pages (`render`)."""
