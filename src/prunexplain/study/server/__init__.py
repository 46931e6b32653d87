"""The self-hosted study: participants answer the stimuli `study build` wrote, without Mechanical Turk.

- `catalog`: the study folder's manifest.json as experiments and stimuli (files checked to lie inside).
- `assign`: which stimuli a new participant gets (balanced, k distinct participants per stimulus).
- `store`: the answers in SQLite (WAL), one transaction per answer, idempotent submissions.
- `app`, `pages`, `admin`: the FastAPI app (participant pages, JSON API, token-protected admin pages).
- `comprehension`: the questions about the task asked after the instructions, from the experiment spec.
- `platforms`: Prolific's and MTurk's ids, the completion URL, MTurk's externalSubmit and ExternalQuestion.
- `flow`: the participant flow (consented ... completed, excluded and why), for the admin and flow.json.
- `security`, `guard`, `limits`: secrets and codes; middleware (headers, body size, Origin); per-client
  rate limits and session caps.
- `export`: the answers as MTurk batch-results CSVs that `prunexplain analyze` reads unchanged, and flow.json.
"""
