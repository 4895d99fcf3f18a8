"""hear-abt: Audio Barlow Twins embeddings behind the HEAR 2021 API."""
