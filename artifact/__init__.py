"""The torch-free contract shared by training, export and serving.

`manifest` describes an exported model; `preprocessing` turns a decoded image into the model's input;
`image` decodes bytes or files into RGB images. Nothing here imports torch or any other graft package.
"""
