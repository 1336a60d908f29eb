"""camelid.serve"""
