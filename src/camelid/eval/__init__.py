"""camelid.eval"""
