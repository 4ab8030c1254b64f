"""Exports of a trained run, each checked against the adapter it came from.

    merge.py        adapter + base → merged model folder (backend's `merge`), tokenizer, generation config
    gguf.py         merged folder → GGUF files (llama.cpp's converter and quantizer) + Ollama Modelfile
    tools.py        preparing llama.cpp's converter from the llama-cpp-python sdist (`export prepare`)
    chat_formats.py end-of-turn tokens and the Ollama TEMPLATE equivalent to a Jinja chat template
    gotemplate.py   renders that TEMPLATE, to prove it writes what the Jinja template wrote
    modelfile.py    the Modelfile text
    check.py        fidelity checks, run in a fresh process
"""
