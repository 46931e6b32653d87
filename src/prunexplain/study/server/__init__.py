"""The self-hosted study: participants answer the stimuli `study build` wrote, without Mechanical Turk.

- `catalog`: the study folder's manifest.json as experiments and stimuli (files checked to lie inside).
- `assign`: which stimuli a new participant gets (balanced, k distinct participants per stimulus).
- `store`: the answers in SQLite (WAL), one transaction per answer, idempotent submissions.
- `app`, `pages`, `admin`: the FastAPI app (participant pages, JSON API, token-protected admin pages).
- `security`, `guard`, `limits`: secrets and codes; middleware (headers, body size, Origin); per-client
  rate limits and session caps.
- `export`: the answers as MTurk batch-results CSVs that `prunexplain analyze` reads unchanged.
"""
