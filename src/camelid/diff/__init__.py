"""camelid.diff"""
