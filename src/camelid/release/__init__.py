"""camelid.release"""
