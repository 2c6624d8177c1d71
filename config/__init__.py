"""Parsers of what operators write: TF Serving's model, batching and monitoring config files and
Aspire's side file. Both planes import them; they import only core and policies."""
