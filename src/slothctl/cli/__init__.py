"""Thin Typer commands: parse, call a library function, render its events and result."""
